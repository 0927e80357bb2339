"""The probes file: every refusal names its reason and field, and `factpatch serve` stops on it
before creating anything."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from factpatch.server.probes.config import ProbeConfigError, Schedule, Thresholds, load, parse

from .helpers import AGENT_TOKEN, write_tokens

GOOD = {"regression": [{"prompt": "Oslo is a city in", "expect": "Norway"}]}


@pytest.mark.parametrize("doc, reason, field", [
    ({}, "EMPTY_REGRESSION_SET", "regression"),
    ({"regression": []}, "EMPTY_REGRESSION_SET", "regression"),
    ({**GOOD, "schedule": {"interval_seconds": 5}}, "PROBE_SCHEDULE_TOO_FAST", "schedule.interval_seconds"),
    ({**GOOD, "min_interval_seconds": 60, "schedule": {"interval_seconds": 30}}, "PROBE_SCHEDULE_TOO_FAST",
     "schedule.interval_seconds"),
    ({**GOOD, "schedule": {"max_busy_share": 0.9}}, "BAD_PROBE_SCHEDULE", "schedule.max_busy_share"),
    ({**GOOD, "schedule": {"concurrency": 0}}, "BAD_PROBE_SCHEDULE", "schedule.concurrency"),
    ({**GOOD, "thresholds": {"min_probe_efficacy": 1.5}}, "BAD_PROBE_CONFIG", "thresholds.min_probe_efficacy"),
    ({"regression": [{"prompt": "Oslo is a city in"}]}, "BAD_PROBE_CONFIG", "regression.0.expect"),
    ({**GOOD, "regresion": []}, "BAD_PROBE_CONFIG", "regresion"),
])
def test_refusals_name_reason_and_field(doc, reason, field):
    with pytest.raises(ProbeConfigError) as e:
        parse(doc)
    assert (e.value.reason, e.value.field) == (reason, field)


def test_defaults_and_off_switch(tmp_path):
    cfg = parse({**GOOD, "schedule": {"interval_seconds": 0}})
    # the file's value where it gives one, the documented defaults for the rest
    off = Schedule(interval_seconds=0, sample_size=64, concurrency=2, max_busy_share=0.05)
    assert cfg.schedule == off
    assert cfg.thresholds == Thresholds(min_probe_efficacy=0.9, max_regression_drift=0.05, max_cumulative_edits=1000,
                                        max_relative_weight_change=0.05)
    f = tmp_path / "probes.json"
    f.write_text('{"regression": [{"prompt": "a", "expect": "b"}]}')
    assert load(f).regression[0].expect == "b"
    f.write_text("{not json")
    with pytest.raises(ProbeConfigError, match="not valid JSON"):
        load(f)


def _serve(tmp_path, state, *args: str):
    """`factpatch serve` in-process with a state folder, tokens and no gateway, plus `args`."""
    import typer

    from factpatch.server.cli.serve import serve

    app = typer.Typer()
    app.command("serve")(serve)
    app.command("noop")(lambda: None)  # two commands, so "serve" stays a sub-command
    return CliRunner().invoke(app, ["serve", "--state-dir", str(state),
                                    "--client-tokens-file", str(write_tokens(tmp_path / "t.yaml")),
                                    "--gateway-listen", "off", *args],
                              env={"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN})


def test_serve_stops_on_a_refused_probes_file(tmp_path):
    probes = tmp_path / "probes.yaml"
    probes.write_text(yaml.safe_dump({"regression": [], "schedule": {"interval_seconds": 60}}))
    state = tmp_path / "state"
    r = _serve(tmp_path, state, "--probes", str(probes))
    assert r.exit_code == 2, r.output
    assert "EMPTY_REGRESSION_SET" in r.output
    assert not state.exists()


def test_serve_refuses_a_drain_budget_out_of_range_before_creating_anything(tmp_path):
    state = tmp_path / "state"
    for bad in ("-1", "3601", "soon"):
        r = _serve(tmp_path, state, "--drain-timeout", bad)
        assert r.exit_code == 2, r.output
        assert "--drain-timeout" in r.output, r.output
    assert not state.exists()


def test_a_fact_written_with_several_phrasings_is_asked_once_per_question():
    from factpatch.server.probes.sets import edit_questions

    edit = {"subject": "Harbor Support", "relation": "refund period", "target_new": "30 days"}
    manifest = {"edits": [{**edit, "prompt": "{} offers refunds within", "paraphrases": ["The refund period of {} is"]},
                          {**edit, "prompt": "The refund period of {} is"},
                          {**edit, "prompt": "The refund period of {} is"}]}
    extras = [{"subject": "Harbor Support", "relation": "refund period", "paraphrases": ["At {} the refund window is"]}]
    edits, paraphrases = edit_questions(manifest, extras)
    assert [q.prompt for q in edits] == ["Harbor Support offers refunds within", "The refund period of Harbor Support is"]
    # the second phrasing is an edit prompt already; the extra is asked once, not once per edit
    assert [q.prompt for q in paraphrases] == ["At Harbor Support the refund window is"]
