"""Default layers and settings come from data: published settings per model, a file of the user's, or the
depth rule with the papers' main model's settings; never the fixture's own for another model."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from transformers import GPT2Config, GPTJConfig, LlamaConfig

from factpatch.editor import model_defaults
from factpatch.editor.layers import default_layers
from factpatch.editor.memit import MemitParams
from factpatch.editor.pipeline import EditOptions, with_model_defaults
from factpatch.editor.rome import RomeParams


def test_every_published_file_loads_and_names_its_source():
    found = {d.name: d for d in model_defaults.published()}
    assert {"GPT-2 XL (1.5B)", "GPT-J 6B", "Llama 3 8B"} <= set(found)
    for d in found.values():
        assert d.match is not None and "et al." in d.rome.source and "et al." in d.memit.source
        assert d.rome.layer in d.memit.layers  # ROME's layer lies inside MEMIT's window, as published


def test_a_model_gets_the_published_layers_of_its_family_and_size(tmp_path):
    cases = [
        (GPT2Config(n_layer=48, n_embd=1600), "GPT-2 XL (1.5B)", [17], list(range(13, 18)), 20000),
        (GPTJConfig(n_layer=28, n_embd=4096), "GPT-J 6B", [5], list(range(3, 9)), 15000),
        (LlamaConfig(num_hidden_layers=32, hidden_size=4096, vocab_size=128256), "Llama 3 8B", [5], list(range(4, 9)), 15000),
    ]
    for config, name, rome, memit, lam in cases:
        d = model_defaults.for_model(tmp_path, config)
        assert d.name == name and d.memit.mom2_weight == lam
        assert default_layers(config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer, "rome", d) == rome
        assert default_layers(32, "memit", d) == memit


def test_a_model_without_a_file_falls_back_to_the_published_depths(tmp_path):
    # Llama 2 7B (32 layers, vocabulary 32,000) has no file here: ROME at 0.17 of the depth, MEMIT 0.1-0.28.
    assert model_defaults.for_model(tmp_path, LlamaConfig(num_hidden_layers=32, hidden_size=4096, vocab_size=32000)) is None
    assert default_layers(32, "rome") == [5]
    assert default_layers(32, "memit") == list(range(3, 10))


def test_an_hparams_file_overrides_the_published_one(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"name": "mine", "rome": {"layer": 3, "source": "our sweep"},
                             "memit": {"layers": [2, 3], "mom2_weight": 5000, "source": "our sweep"}}))
    d = model_defaults.for_model(tmp_path, GPT2Config(n_layer=48, n_embd=1600), override=f)
    assert d.name == "mine" and d.origin == str(f)
    assert default_layers(48, "rome", d) == [3] and default_layers(48, "memit", d) == [2, 3]


def _resolved(defaults, opts=None):
    return with_model_defaults(SimpleNamespace(defaults=defaults), opts or EditOptions())


def test_a_published_family_edits_with_its_papers_value_settings(tmp_path):
    d = model_defaults.for_model(tmp_path, GPTJConfig(n_layer=28, n_embd=4096))
    opts = _resolved(d, EditOptions(rome=replace(RomeParams(), value=replace(RomeParams().value, stop_at_argmax=True))))
    rome, memit = opts.rome, opts.memit
    # ROME clamps δ at 4 × the MLP output, MEMIT at 0.75 × the layer's output (the papers' code)
    assert (rome.value.steps, rome.value.lr, rome.value.clamp_norm, rome.value.norm_ref) == (20, 0.5, 4.0, "mlp")
    assert (memit.value.steps, memit.value.clamp_norm, memit.value.norm_ref) == (25, 0.75, "residual")
    assert rome.value.decay_form == memit.value.decay_form == "published"
    assert rome.value.early_stop_kl is None and rome.n_prefixes == 20 and memit.mom2_weight == 15000
    assert rome.value.stop_at_argmax  # what the file does not name stays as the caller set it


def test_a_model_no_file_matches_takes_the_fallback_files_settings_not_the_fixtures(tmp_path):
    assert model_defaults.for_model(tmp_path, LlamaConfig(num_hidden_layers=32, hidden_size=4096, vocab_size=32000)) is None
    opts = _resolved(None)
    fallback = model_defaults.fallback()
    assert opts.rome.value.steps == fallback.rome.value.steps != RomeParams().value.steps
    assert opts.memit.value.norm_ref == fallback.memit.value.norm_ref
    assert opts.memit.value.clamp_norm == fallback.memit.value.clamp_norm != MemitParams().value.clamp_norm
    assert opts.memit.mom2_weight == fallback.memit.mom2_weight


def test_the_fixtures_defaults_name_its_layers_romes_fallback_and_weights_and_its_own_settings_stay(fixture_dir):
    from transformers import AutoConfig

    fixture = model_defaults.for_model(fixture_dir, AutoConfig.from_pretrained(str(fixture_dir)))
    assert fixture.name == "fixture" and fixture.memit.value is None
    named = {"anchor_kl_factor": 1.0, "prompt_weight": 4.0}  # ROME's keep prompts' and prompt rows' weights
    assert fixture.rome.value.given() == named
    opts = _resolved(fixture)
    assert opts.rome.last_token_fallback is True
    own = RomeParams().value  # factpatch's own, for every other model
    for field, value in named.items():
        assert getattr(opts.rome.value, field) == value != getattr(own, field)
    plain = replace(opts.rome, last_token_fallback=None, value=own)
    assert replace(opts, rome=plain) == EditOptions()
    # the caller's choice (--fallback-layer off, or a layer) stands over the model's
    assert _resolved(fixture, EditOptions(rome=RomeParams(last_token_fallback=False))).rome.last_token_fallback is False


def test_a_setting_the_caller_changed_stands_over_the_models_file(tmp_path, fixture_dir):
    from transformers import AutoConfig

    fixture = model_defaults.for_model(fixture_dir, AutoConfig.from_pretrained(str(fixture_dir)))
    mine = RomeParams(value=replace(RomeParams().value, prompt_weight=1.5))
    opts = _resolved(fixture, EditOptions(rome=mine))
    assert opts.rome.value.prompt_weight == 1.5  # the caller's, not the fixture's 4.0
    assert opts.rome.value.anchor_kl_factor == fixture.rome.value.anchor_kl_factor  # left open: the file's
    gptj = model_defaults.for_model(tmp_path, GPTJConfig(n_layer=28, n_embd=4096))
    opts = _resolved(gptj, EditOptions(rome=replace(mine, n_prefixes=3), memit=replace(MemitParams(), mom2_weight=777.0)))
    assert (opts.rome.n_prefixes, opts.memit.mom2_weight) == (3, 777.0)
    assert (opts.rome.value.steps, opts.rome.value.lr) == (20, 0.5)  # the paper's, which the caller left


def test_romes_fallback_is_off_for_a_published_family_and_a_model_no_file_matches(tmp_path):
    for d in (model_defaults.for_model(tmp_path, GPTJConfig(n_layer=28, n_embd=4096)), None):
        assert _resolved(d).rome.last_token_fallback is False
    assert all(not d.rome.last_token_fallback for d in model_defaults.published())


def test_joint_keeps_its_own_value_settings_under_a_published_file(tmp_path):
    d = model_defaults.for_model(tmp_path, GPT2Config(n_layer=48, n_embd=1600))
    opts = _resolved(d, EditOptions(memit=MemitParams.joint()))
    assert opts.memit.value == MemitParams.joint().value and opts.memit.mom2_weight == 20000


def test_an_hparams_file_sets_only_the_value_fields_it_names(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"name": "mine", "rome": {"layer": 3, "value": {"steps": 7, "early_stop_kl": None}, "source": "s"},
                             "memit": {"layers": [2, 3], "source": "s"}}))
    opts = _resolved(model_defaults.for_model(tmp_path, GPT2Config(n_layer=48, n_embd=1600), override=f))
    assert opts.rome.value == replace(RomeParams().value, steps=7, early_stop_kl=None)
    assert opts.memit == MemitParams()


def test_an_hparams_file_sets_the_kl_plateau_stop_and_refuses_a_patience_under_one_step(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"name": "mine", "rome": {"layer": 3, "value": {"kl_patience": 10, "kl_plateau": 0.05}, "source": "s"},
                             "memit": {"layers": [2, 3], "source": "s"}}))
    opts = _resolved(model_defaults.for_model(tmp_path, GPT2Config(n_layer=48, n_embd=1600), override=f))
    assert (opts.rome.value.kl_patience, opts.rome.value.kl_plateau) == (10, 0.05)
    f.write_text(f.read_text().replace('"kl_patience": 10', '"kl_patience": 0'))
    with pytest.raises(model_defaults.HparamsError, match="kl_patience"):
        model_defaults.for_model(tmp_path, GPT2Config(n_layer=48, n_embd=1600), override=f)


def test_an_edit_runs_with_the_settings_its_hparams_file_names(tmp_path, fixture_dir, monkeypatch):
    """End to end on the fixture: its layers, GPT-J's published ROME settings, from an --hparams file."""
    from factpatch.editor.pipeline import check_architecture, load, run_edit
    from factpatch.fixture.build import load_world

    from .conftest import fixture_edits

    monkeypatch.setenv("FACTPATCH_STATS_CACHE", str(tmp_path / "stats"))
    gptj = json.loads((model_defaults.HPARAMS_DIR / "gpt-j-6b.json").read_text())
    layer = model_defaults.for_model(fixture_dir, check_architecture(fixture_dir)).rome.layer
    f = tmp_path / "fixture-with-gptj-settings.json"
    f.write_text(json.dumps({"name": "fixture layers, GPT-J settings", "rome": {**gptj["rome"], "layer": layer},
                             "memit": {**gptj["memit"], "layers": [layer]}}))
    loaded = load(fixture_dir, hparams=f)
    edits = fixture_edits(load_world(fixture_dir), 1, seed=3)
    result = run_edit(loaded, edits, EditOptions(method="rome", layers="default", n_samples=300))
    hp = result.patch.manifest["hparams"]
    assert (hp["value"]["steps"], hp["value"]["norm_ref"], hp["value"]["decay_form"], hp["n_prefixes"]) == (20, "mlp", "published", 20)
    assert hp["settings_from"]["origin"] == str(f) and not hp["settings_from"]["fallback"]
    first = result.info["per_edit"][0]
    assert first["layer"] == layer and (first["second_pass"] or 1 <= first["steps"] <= 20)
