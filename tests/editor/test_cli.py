"""The commands end to end on the fixture: edit writes a patch, inspect prints it, eval gates on it."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from factpatch.cli import _register_subcommands, app
from factpatch.core.patchfile import read
from factpatch.editor.pipeline import answers_already

from .conftest import fixture_edits, rome_layer

_register_subcommands()
runner = CliRunner()


def test_edit_show_eval(tmp_path, fixture_dir, world, loaded):
    edits = fixture_edits(world, 3, seed=21)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"edits": [e.model_dump(exclude_defaults=True) for e in edits]}))
    out = tmp_path / "e.fpatch"
    env = {"FACTPATCH_CACHE": str(tmp_path / "cache"), "FACTPATCH_STATS_CACHE": None}  # None: unset for the call

    res = runner.invoke(app, ["edit", "--model", str(fixture_dir), "--spec", str(spec), "--out", str(out),
                              "--method", "rome", "--layers", str(rome_layer(loaded)), "--samples", "300", "--no-eval", "--json",
                              str(tmp_path / "edit.json")], env=env)
    # The command's mechanics; edit quality has its own floors in test_quality.py.
    assert res.exit_code == 0, res.output
    patch, digest = read(out)
    assert patch.manifest["method"] == "rome" and len(patch.manifest["edits"]) == 3
    assert (tmp_path / "cache" / "stats").exists()
    # the summary shows each ROME edit's final target NLL, as the JSON report records it
    details = json.loads((tmp_path / "edit.json").read_text())["details"]["per_edit"]
    # ROME's layer, and the fallback's layer for an edit written at the prompt's last token
    assert patch.manifest["layers"] == sorted({rome_layer(loaded)} | {d["layer"] for d in details})
    assert len(details) == 3 and "target NLL" in res.output
    assert all(f"{d['nll']:.2f}" in res.output for d in details)

    res = runner.invoke(app, ["patch", "inspect", str(out)], env=env)
    assert res.exit_code == 0, res.output
    assert edits[0].subject in res.output and digest in res.output and "down_proj" in res.output

    res = runner.invoke(app, ["eval", "--model", str(fixture_dir), "--patch", str(out), "--spec", str(spec),
                              "--json", str(tmp_path / "eval.json"), "--min-efficacy", "0", "--min-generalization", "0",
                              "--max-specificity-drop", "100", "--max-ppl-drift", "0.05"], env=env)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["passed"] and report["patch"] == digest
    assert {"efficacy", "generalization", "neighbours_unchanged", "old_value_neighbours_unchanged",
            "new_value_neighbours_unchanged", "ppl_drift", "kl_unrelated"} <= set(report["metrics"])
    assert "holding the old value" in res.output and "holding the new value" in res.output

    # Asked of an edit it does not hold, eval names it and what the model answers instead. The edit is one
    # the patched model still answers the old way on this build: a patch can move another subject's answer,
    # which is eval's to measure (on seed 3's build, Leo Krudrustax's flute → trumpet moves David Brufemu,
    # who plays the trumpet, to the drums).
    extra = fixture_edits(world, 12, seed=21)
    assert extra[:3] == edits
    as_before = answers_already(loaded, [e.model_copy(update={"target_new": e.target_old}) for e in extra[3:]], patch)
    assert as_before.any()
    outsider = extra[3 + int(as_before.float().argmax())]
    spec4 = tmp_path / "spec4.yaml"
    spec4.write_text(yaml.safe_dump({"edits": [e.model_dump(exclude_defaults=True) for e in [*edits, outsider]]}))
    res = runner.invoke(app, ["eval", "--model", str(fixture_dir), "--patch", str(out), "--spec", str(spec4), "--json",
                              str(tmp_path / "eval4.json"), "--min-efficacy", "0"], env=env)
    missed = json.loads((tmp_path / "eval4.json").read_text())["metrics"]["edits_not_taken"]
    assert outsider.subject in [x["subject"] for x in missed] and "not taken" in res.output, res.output
    assert outsider.subject in res.output and next(x for x in missed if x["edit"] == 3)["answer"] == outsider.target_old

    # A gate the patch cannot meet fails the command.
    res = runner.invoke(app, ["eval", "--model", str(fixture_dir), "--patch", str(out), "--min-efficacy", "1.01"], env=env)
    assert res.exit_code == 1, res.output
