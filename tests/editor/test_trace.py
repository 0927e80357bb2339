"""Causal tracing on the fixture: where the MLP effect peaks, determinism, the command and its bad input."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from factpatch.cli import _register_subcommands, app
from factpatch.editor.trace import TraceError, TraceItem, TraceSettings, items_for_edits, trace

from .conftest import fixture_edits

_register_subcommands()
runner = CliRunner()


@pytest.fixture(scope="module")
def traced(loaded, world):
    # Sixteen prompts, four noise samples each: with four prompts single facts decide the profile
    # (on one build a subject's first piece outweighed its last for two of them).
    items = items_for_edits(loaded.adapter, loaded.tok, fixture_edits(world, 16, seed=31))
    return trace(loaded.adapter, loaded.tok, items, TraceSettings(samples=4, seed=3))


def test_mlp_effect_peaks_at_the_subjects_last_token(traced):
    # The traced facts are known on the whole (every build answers 97 % of its trained phrasings); one
    # fact's first-token probability may still sit under a half on some build.
    assert sum(p.p_clean for p in traced.prompts) / len(traced.prompts) > 0.5
    # Corrupting the subject costs the prompts part of their answer, so there is something to restore.
    # How much varies with the build and the prompt (a relation's commonest answer survives it best).
    assert sum(p.p_corrupt < p.p_clean for p in traced.prompts) >= 0.75 * len(traced.prompts)
    assert sum(p.p_corrupt for p in traced.prompts) < 2 / 3 * sum(p.p_clean for p in traced.prompts)
    roles, mat, _ = traced.by_role("mlp")
    assert mat.shape == (len(roles), traced.n_layers)
    last = roles.index("subject last")
    profile = mat[last]
    # The subject's last token beats every other token that precedes the answer position.
    others = [i for i, r in enumerate(roles) if r not in ("subject last", "last token")]
    assert all(profile.max() > mat[i].max() + 0.05 for i in others)
    # A band, not a flat line: the peak layer stands well above the median layer. (How high the peak is
    # varies with the build: 0.12-0.18 on the builds measured.)
    assert profile.max() > 3 * max(0.0, float(profile.median()))
    for p in traced.prompts:
        assert p.restored["residual"].shape == (len(p.tokens), traced.n_layers)


def test_same_seed_same_numbers(loaded, world):
    items = items_for_edits(loaded.adapter, loaded.tok, fixture_edits(world, 1, seed=32))
    s = TraceSettings(samples=2, seed=5, kinds=("mlp",), max_rows=64)
    a = trace(loaded.adapter, loaded.tok, items, s).to_json()
    b = trace(loaded.adapter, loaded.tok, items, s).to_json()
    assert a == b
    c = trace(loaded.adapter, loaded.tok, items, TraceSettings(samples=2, seed=6, kinds=("mlp",))).to_json()
    assert c["prompts"][0]["p_corrupt"] != a["prompts"][0]["p_corrupt"]


def test_subject_missing_from_the_tokens(loaded):
    with pytest.raises(TraceError, match="Zzyzx"):
        trace(loaded.adapter, loaded.tok, [TraceItem("The refund period of {} is", "Zzyzx Qwrtp", "14 days")])


def _spec(tmp_path, edits):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"edits": [e.model_dump(exclude_defaults=True) for e in edits]}))
    return path


def test_trace_command_writes_png_and_json(tmp_path, fixture_dir, world):
    spec = _spec(tmp_path, fixture_edits(world, 2, seed=33))
    png, js = tmp_path / "t.png", tmp_path / "t.json"
    res = runner.invoke(app, ["trace", "--model", str(fixture_dir), "--spec", str(spec), "--png", str(png),
                              "--json", str(js), "--samples", "2"])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert set(data["by_role"]) == {"residual", "mlp", "attn"}
    assert len(data["prompts"]) == 2 and data["noise_sigma"] == pytest.approx(3 * data["noise_std"])
    assert "subject last" in data["by_role"]["mlp"]["roles"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml", "t.json", "t.png"]


def test_trace_command_bad_input(tmp_path, fixture_dir, world):
    good = fixture_edits(world, 1, seed=34)[0]
    js = tmp_path / "out.json"

    unknown = _spec(tmp_path, [good.model_copy(update={"subject": "Zzyzx Qwrtp", "target_old": None})])
    res = runner.invoke(app, ["trace", "--model", str(fixture_dir), "--spec", str(unknown), "--json", str(js)])
    assert res.exit_code == 2 and "Zzyzx" in res.output, res.output

    empty = tmp_path / "empty.yaml"
    empty.write_text("edits: []\n")
    res = runner.invoke(app, ["trace", "--model", str(fixture_dir), "--spec", str(empty), "--json", str(js)])
    assert res.exit_code == 2 and "no edits" in res.output, res.output

    spec = _spec(tmp_path, [good])
    for bad in (tmp_path / "missing" / "t.png", tmp_path):
        res = runner.invoke(app, ["trace", "--model", str(fixture_dir), "--spec", str(spec), "--png", str(bad),
                                  "--json", str(js)])
        assert res.exit_code == 2 and "--png" in res.output, res.output
    assert not js.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml", "spec.yaml"]
