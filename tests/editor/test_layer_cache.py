"""`--layers auto`'s choice is paid once per model and relation set, and the model's fingerprint once
per version of its files."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from factpatch.editor import layer_cache, model_identity, pipeline
from factpatch.editor.pipeline import EditOptions, run_edit
from factpatch.editor.rome import RomeParams

from .conftest import fixture_edits


def _opts(**kw) -> EditOptions:
    # A short ROME: this is about where the choice comes from, not how good the edits are.
    rome = RomeParams(value=replace(RomeParams().value, steps=20), last_token_fallback=False, retry_lr=None)
    return EditOptions(**{"method": "rome", "layers": "auto", "n_samples": 300, "rome": rome, **kw})


def _of_relations(world, relations: set[str], n: int, seed: int):
    picked = [e for e in fixture_edits(world, 200, seed=seed) if e.relation in relations]
    return picked[:n]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTPATCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_relation_is_traced_once_then_read_back(loaded, world, cache, monkeypatch):
    first_rel = world.facts[0].relation
    first = run_edit(loaded, _of_relations(world, {first_rel}, 2, seed=1), _opts()).patch.manifest["hparams"]["layer_choice"]
    assert first["cache"]["hit"] is False and first["cache"]["relations"] == [first_rel]
    stored = list((cache / "layer_choice").rglob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["report"]["chosen"] == first["chosen"]

    # Other edits of the same relation: the stored choice, and no trace or sweep at all.
    def no_sweep(*a, **k):
        raise AssertionError("the trace and sweep ran again")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "choose_layers", no_sweep)
        again = run_edit(loaded, _of_relations(world, {first_rel}, 2, seed=2), _opts())
    report = again.patch.manifest["hparams"]["layer_choice"]
    assert report["cache"]["hit"] is True and report["cache"]["path"] == str(stored[0])
    assert list(again.layers) == first["chosen"] == report["chosen"]
    assert report["candidates"] == first["candidates"]  # the report of the sweep that made the choice

    # Another relation is another key: traced and stored beside the first.
    other_rel = next(f.relation for f in world.facts if f.relation != first_rel)
    other = run_edit(loaded, _of_relations(world, {other_rel}, 2, seed=3), _opts()).patch.manifest["hparams"]["layer_choice"]
    assert other["cache"]["hit"] is False
    assert len(list((cache / "layer_choice").rglob("*.json"))) == 2

    # Other sweep settings are another key too: a choice is only read back for what it was made with.
    with monkeypatch.context() as m:
        m.setattr(pipeline, "choose_layers", no_sweep)
        with pytest.raises(AssertionError, match="ran again"):
            run_edit(loaded, _of_relations(world, {first_rel}, 2, seed=2), _opts(n_samples=None))


def test_retrace_runs_again_and_replaces_the_stored_choice(loaded, world, cache):
    edits = _of_relations(world, {world.facts[0].relation}, 2, seed=4)
    run_edit(loaded, edits, _opts())
    path = next((cache / "layer_choice").rglob("*.json"))
    record = json.loads(path.read_text())
    record["made"] = "2000-01-01T00:00:00Z"  # so the rewrite shows
    path.write_text(json.dumps(record))
    report = run_edit(loaded, edits, _opts(layer_cache=False)).patch.manifest["hparams"]["layer_choice"]
    assert report["cache"]["hit"] is False and report["cache"]["retraced"] is True
    assert json.loads(path.read_text())["made"] != "2000-01-01T00:00:00Z"


def test_a_stored_choice_the_model_cannot_take_is_chosen_again(loaded, world, cache):
    edits = _of_relations(world, {world.facts[0].relation}, 2, seed=5)
    run_edit(loaded, edits, _opts())
    path = next((cache / "layer_choice").rglob("*.json"))
    record = json.loads(path.read_text())
    record["report"]["chosen"] = [loaded.adapter.n_layers + 3]  # a layer this model does not have
    path.write_text(json.dumps(record))
    report = run_edit(loaded, edits, _opts()).patch.manifest["hparams"]["layer_choice"]
    assert report["cache"]["hit"] is False and all(0 <= l < loaded.adapter.n_layers for l in report["chosen"])
    path.write_text("{ not json")
    report = run_edit(loaded, edits, _opts()).patch.manifest["hparams"]["layer_choice"]
    assert report["cache"]["hit"] is False
    assert json.loads(path.read_text())["report"]["chosen"] == report["chosen"]


def test_the_model_fingerprint_is_hashed_once_per_version_of_its_files(fixture_dir, tmp_path, cache, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(fixture_dir / f, model / f)
    hashed = []
    real = model_identity._fingerprint
    monkeypatch.setattr(model_identity, "_fingerprint", lambda ckpt: hashed.append(1) or real(ckpt))

    first = model_identity.model_identity(model)
    assert model_identity.model_identity(model) == first and len(hashed) == 1  # the second call only stats

    # A rewritten file, even with the same bytes, is hashed again; other bytes give another fingerprint.
    (model / "config.json").write_text((model / "config.json").read_text())
    assert model_identity.model_identity(model) == first and len(hashed) == 2
    cfg = json.loads((model / "config.json").read_text())
    cfg["rms_norm_eps"] = cfg["rms_norm_eps"] * 2
    (model / "config.json").write_text(json.dumps(cfg))
    assert model_identity.model_identity(model) != first and len(hashed) == 3

    # Another folder holding the same files has the same fingerprint (the key is the content).
    twin = tmp_path / "twin"
    shutil.copytree(fixture_dir, twin, ignore=shutil.ignore_patterns("*.json", "tokenizer*"))
    shutil.copy2(fixture_dir / "config.json", twin / "config.json")
    assert model_identity.model_identity(twin) == model_identity.model_identity(fixture_dir)


def test_choice_keys_name_what_the_choice_depends_on():
    base = layer_cache.choice_key("rome", ["b", "a", "a"], RomeParams(), 300, "c0ffee")
    assert base["relations"] == ["a", "b"]
    path = layer_cache.choice_path("sha256:" + "1" * 64, base)
    assert layer_cache.choice_path("sha256:" + "1" * 64, layer_cache.choice_key("rome", ["a", "b"], RomeParams(), 300, "c0ffee")) == path
    for changed in (layer_cache.choice_key("memit", ["a", "b"], RomeParams(), 300, "c0ffee"),
                    layer_cache.choice_key("rome", ["a"], RomeParams(), 300, "c0ffee"),
                    layer_cache.choice_key("rome", ["a", "b"], RomeParams(n_prefixes=3), 300, "c0ffee"),
                    layer_cache.choice_key("rome", ["a", "b"], RomeParams(), 400, "c0ffee"),
                    layer_cache.choice_key("rome", ["a", "b"], RomeParams(), 300, "decaf")):
        assert layer_cache.choice_path("sha256:" + "1" * 64, changed) != path
    assert layer_cache.choice_path("sha256:" + "2" * 64, base).parent != path.parent  # another model
