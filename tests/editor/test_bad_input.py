"""Bad input fails before any computation, names what is wrong, exits 2 and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factpatch.cli import _register_subcommands, app

_register_subcommands()
runner = CliRunner()

GOOD = {"subject": "Harbor Support", "relation": "refund period", "prompt": "The refund period of {} is", "target_new": "30 days"}


def _run(tmp_path: Path, model, spec_text: str, *extra: str, name: str = "spec.yaml"):
    spec = tmp_path / name
    spec.write_text(spec_text)
    out = tmp_path / "out.fpatch"
    cache = tmp_path / "cache"
    res = runner.invoke(app, ["edit", "--model", str(model), "--spec", str(spec), "--out", str(out), *extra],
                        env={"FACTPATCH_CACHE": str(cache), "FACTPATCH_STATS_CACHE": None})
    assert res.exit_code == 2, res.output
    assert not out.exists() and not (cache / "stats").exists()
    return res.output


def _yaml(**overrides) -> str:
    import yaml

    return yaml.safe_dump({"edits": [{**GOOD, **overrides}]})


@pytest.mark.parametrize(
    "spec_text, message",
    [
        (_yaml(prompt="The refund period of Harbor Support is"), "placeholder"),
        (_yaml(subject=" "), "subject.*must not be empty"),
        (_yaml(target_new=""), "target_new.*must not be empty"),
        (
            "edits:\n"
            "  - {subject: Harbor Support, relation: refund period, prompt: 'The refund period of {} is', target_new: 30 days}\n"
            "  - {subject: Harbor Support, relation: refund period, prompt: 'The refund period of {} is', target_new: 60 days}\n",
            "different targets",
        ),
        ("edits:\n  - subject: [unclosed\n", r"line \d+, column \d+: not valid YAML"),
        (_yaml(keep=["{} ships same-day orders placed before", "no placeholder"]), "keep prompt 1 must contain"),
        (_yaml(keep=["The refund period of {} is"]), "keep prompt 0 .*asks this edit's own question"),
        (_yaml(neighbours=["Cedar Support", " "]), "neighbour 1 must not be empty"),
        (_yaml(neighbours=["Harbor Support"]), "neighbour 0 is the edit's own subject"),
        (
            "edits:\n"
            "  - {subject: Harbor Support, relation: refund period, prompt: 'The refund period of {} is', target_new: 30 days,\n"
            "     keep: ['{} stops same-day shipping at']}\n"
            "  - {subject: Harbor Support, relation: shipping cutoff, prompt: '{} stops same-day shipping at', target_new: 3 pm}\n",
            "edit 0 keeps .* but edit 1 changes that answer",
        ),
    ],
)
def test_spec_errors(tmp_path, fixture_dir, spec_text, message):
    import re

    assert re.search(message, _run(tmp_path, fixture_dir, spec_text), re.S)


def test_jsonl_names_the_line(tmp_path, fixture_dir):
    text = json.dumps(GOOD) + "\n" + '{"subject": "x", oops}\n'
    assert "line 2" in _run(tmp_path, fixture_dir, text, name="spec.jsonl")


def test_subject_not_tokenisable(tmp_path, fixture_dir):
    assert "not tokenisable" in _run(tmp_path, fixture_dir, _yaml(subject="Qqzzx Wvvq"))


def test_target_equal_to_current_answer(tmp_path, fixture_dir, world):
    fact = world.fact("Harbor Support", "refund period")
    assert "already the model's answer" in _run(tmp_path, fixture_dir, _yaml(target_new=fact.object))


def test_layer_out_of_range(tmp_path, fixture_dir):
    assert "out of range" in _run(tmp_path, fixture_dir, _yaml(), "--layers", "1,99")


def test_fallback_layer_out_of_range_or_not_a_layer(tmp_path, fixture_dir):
    assert "--fallback-layer 9: out of range" in _run(tmp_path, fixture_dir, _yaml(), "--method", "rome", "--fallback-layer", "9")
    assert "--fallback-layer 9: out of range" in _run(tmp_path, fixture_dir, _yaml(), "--fallback-layer", "9")
    assert "give a layer number or off" in _run(tmp_path, fixture_dir, _yaml(), "--fallback-layer", "late")


def test_rome_takes_one_layer(tmp_path, fixture_dir):
    assert "exactly one layer" in _run(tmp_path, fixture_dir, _yaml(), "--method", "rome", "--layers", "1,2")


def test_joint_memit_takes_one_layer_and_only_memit(tmp_path, fixture_dir):
    assert "MEMIT with --joint edits exactly one layer" in _run(tmp_path, fixture_dir, _yaml(), "--joint", "--layers", "0,1")
    assert "--joint is a MEMIT setting" in _run(tmp_path, fixture_dir, _yaml(), "--joint", "--method", "rome")


def test_memory_budget_must_be_above_zero(tmp_path, fixture_dir):
    for bad in ("0", "-3", "lots"):
        assert f"--memory-budget {bad!r}: MiB of activations" in _run(tmp_path, fixture_dir, _yaml(), "--memory-budget", bad)


def test_chain_weight_needs_a_parent_and_a_weight_of_zero_or_more(tmp_path, fixture_dir):
    says = "with --parent (it weighs the parent chain's edits)"
    assert says in _run(tmp_path, fixture_dir, _yaml(), "--chain-weight", "100")
    parent = tmp_path / "parent.fpatch"
    parent.write_bytes(b"not read: the option is refused first")
    assert "--chain-weight -1.0" in _run(tmp_path, fixture_dir, _yaml(), "--chain-weight", "-1", "--parent", str(parent))
    assert says in _run(tmp_path, fixture_dir, _yaml(), "--chain-weight", "1", "--parent", str(parent), "--method", "rome")


def test_unknown_load_dtype(tmp_path, fixture_dir):
    assert "--load-dtype 'fp8': choose one of stored, float32" in _run(tmp_path, fixture_dir, _yaml(), "--load-dtype", "fp8")


def test_unknown_layer_strategy(tmp_path, fixture_dir):
    assert "not available" in _run(tmp_path, fixture_dir, _yaml(), "--layers", "nonsense")
    assert "--retrace redoes --layers auto's choice" in _run(tmp_path, fixture_dir, _yaml(), "--layers", "2", "--retrace")


def test_unsupported_architecture(tmp_path):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert "unsupported architecture 'bert'" in _run(tmp_path, model, _yaml())


def test_empty_corpus_folder(tmp_path, fixture_dir):
    empty = tmp_path / "corpus"
    empty.mkdir()
    (empty / "blank.txt").write_text("\n\n")
    assert "is empty" in _run(tmp_path, fixture_dir, _yaml(), "--corpus", str(empty))


@pytest.mark.parametrize("content, says", [
    ({"name": "x", "rome": {"layer": "5", "source": "s"}, "memit": {"layers": [1], "source": "s"}}, "field 'rome.layer'"),
    ({"name": "x", "rome": {"layer": 1, "source": "s"}, "memit": {"layers": [1], "source": "s"}, "lr": 3}, "field 'lr'"),
    ({"name": "x", "rome": {"layer": 1, "source": "s"}, "memit": {"layers": [1, 9], "source": "s"}}, "memit.layers 9 is out of range"),
    ({"name": "x", "rome": {"layer": 1, "source": "s"}}, "field 'memit'"),
    ({"name": "x", "rome": {"layer": 1, "value": {"stepz": 20}, "source": "s"}, "memit": {"layers": [1], "source": "s"}},
     "field 'rome.value.stepz'"),
    ({"name": "x", "rome": {"layer": 1, "source": "s"}, "memit": {"layers": [1], "value": {"norm_ref": "ffn"}, "source": "s"}},
     "field 'memit.value.norm_ref'"),
    ({"name": "x", "rome": {"layer": 1, "value": {"steps": None}, "source": "s"}, "memit": {"layers": [1], "source": "s"}},
     "field 'rome.value.steps'"),
])
def test_hparams_file_with_unknown_ill_typed_or_out_of_range_fields(tmp_path, fixture_dir, content, says):
    f = tmp_path / "hp.json"
    f.write_text(json.dumps(content))
    out = _run(tmp_path, fixture_dir, _yaml(), "--hparams", str(f))
    assert says in out and str(f) in out


def test_hparams_file_missing_or_not_json(tmp_path, fixture_dir):
    assert "No such file" in _run(tmp_path, fixture_dir, _yaml(), "--hparams", str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{layers: 3")
    assert "not JSON" in _run(tmp_path, fixture_dir, _yaml(), "--hparams", str(tmp_path / "bad.json"))


def test_a_layer_whose_mlp_is_all_zeros_is_refused(tmp_path, fixture_dir):
    """A checkpoint whose MLP at a layer is zero holds nothing to edit there (its keys are zero)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(fixture_dir, model)
    weights = load_file(model / "model.safetensors")
    for part in ("gate_proj", "up_proj", "down_proj"):
        weights[f"model.layers.2.mlp.{part}.weight"] = torch.zeros_like(weights[f"model.layers.2.mlp.{part}.weight"])
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert "layer 2: its MLP output projection is all zeros" in _run(tmp_path, model, _yaml(), "--layers", "2")


def test_an_edit_its_parent_chain_already_made_is_refused(loaded, tmp_path):
    """On a chain the check is against the model the patch builds on (base + parent), not the base."""
    from factpatch.core import patchfile
    from factpatch.core.spec import Edit
    from factpatch.editor.pipeline import EditInputError, EditOptions, answers_already, run_edit

    edit = Edit(**GOOD)
    first = run_edit(loaded, [edit], EditOptions(method="rome")).patch
    assert first.manifest["eval"] is None and first.names  # written, not yet evaluated
    parent = tmp_path / "v1.fpatch"
    patchfile.write(first, parent)
    with pytest.raises(EditInputError, match="already the parent chain's answer"):
        run_edit(loaded, [edit], EditOptions(method="memit", parent=str(parent)))
    assert answers_already(loaded, [edit], first).all()
    assert not answers_already(loaded, [edit], None).any()  # against the base alone it is a change
