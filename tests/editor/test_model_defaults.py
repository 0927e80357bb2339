"""Default layers come from data: published settings per model, a file of the user's, or the depth rule."""

from __future__ import annotations

import json

from transformers import GPT2Config, GPTJConfig, LlamaConfig

from factpatch.editor import model_defaults
from factpatch.editor.layers import default_layers


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
