"""Every supported family on a tiny random config: names, orientation, keys, and the rank-one insert."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from factpatch.core.patchfile import Patch, apply_to_state_dict
from factpatch.editor.adapters import Adapter, UnsupportedModelError, family_for
from factpatch.editor.hooks import add_rank_one, capture_input
from factpatch.editor.memit import layer_update
from factpatch.editor.rome import input_direction, rank_one
from factpatch.editor.weights import add_low_rank

H, M, L, V = 32, 64, 3, 50
_llama_like = dict(vocab_size=V, hidden_size=H, intermediate_size=M, num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=4)
TINY = {
    "llama": (LlamaForCausalLM, LlamaConfig(**_llama_like), "model.layers.{}.mlp.down_proj.weight", False),
    "mistral": (MistralForCausalLM, MistralConfig(**_llama_like), "model.layers.{}.mlp.down_proj.weight", False),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**_llama_like), "model.layers.{}.mlp.down_proj.weight", False),
    "gpt2": (GPT2LMHeadModel, GPT2Config(vocab_size=V, n_embd=H, n_inner=M, n_layer=L, n_head=4, n_positions=64), "transformer.h.{}.mlp.c_proj.weight", True),
    "gptj": (GPTJForCausalLM, GPTJConfig(vocab_size=V, n_embd=H, n_inner=M, n_layer=L, n_head=4, rotary_dim=4, n_positions=64), "transformer.h.{}.mlp.fc_out.weight", False),
}


@pytest.fixture(params=sorted(TINY))
def tiny(request):
    torch.manual_seed(0)
    cls, config, name, conv1d = TINY[request.param]
    model = cls(config).eval()
    return Adapter(model), name, conv1d


def test_names_orientation_and_shapes(tiny):
    adapter, name, conv1d = tiny
    state = adapter.model.state_dict()
    assert adapter.n_layers == L and adapter.conv1d == conv1d
    for layer in range(L):
        assert adapter.param_name(layer) == name.format(layer)
        assert adapter.param_name(layer) in state
        assert tuple(adapter.linear_weight(layer).shape) == (H, M)
        assert adapter.key_dim(layer) == M
    assert adapter.hidden_dim() == H
    ids = torch.randint(0, V, (2, 7))
    assert tuple(adapter.hidden_at(ids).shape) == (2, 7, H)
    assert adapter.head(adapter.hidden_at(ids)).shape[-1] == V


def test_keys_are_the_projection_input(tiny):
    adapter, _, _ = tiny
    ids = torch.randint(0, V, (2, 5))
    with capture_input(adapter.mlp_out(1), torch.tensor([0, 1]), torch.tensor([4, 2])) as got:
        adapter.hidden_at(ids)
    k = got[0].double()
    assert tuple(k.shape) == (2, M)
    # The projection maps the key to its output: W k in nn.Linear orientation.
    out = adapter.mlp_out(1)(got[0])
    torch.testing.assert_close(out.double(), k @ adapter.linear_weight(1).double().T + (0 if getattr(adapter.mlp_out(1), "bias", None) is None else adapter.mlp_out(1).bias.double()), rtol=1e-4, atol=1e-4)


def test_rank_one_insert_writes_delta_and_matches_patch_arithmetic(tiny):
    adapter, _, conv1d = tiny
    key = torch.randn(M, dtype=torch.float64)
    cov = torch.eye(M, dtype=torch.float64) + 0.1 * torch.ones(M, M, dtype=torch.float64)
    delta = torch.randn(H, dtype=torch.float64)
    u, v = rank_one(delta, key, cov)
    assert tuple(u.shape) == (H, 1) and tuple(v.shape) == (M, 1)
    before = adapter.linear_weight(2).double()
    ckpt = {adapter.param_name(2): adapter.weight(2).detach().clone()}
    add_low_rank(adapter, 2, u, v)
    after = adapter.linear_weight(2).double()
    torch.testing.assert_close(after @ key - before @ key, delta, rtol=1e-3, atol=1e-3)
    # Same bits as a patch reader applying u vᵀ to the checkpoint tensor (transposed for Conv1D).
    apply_to_state_dict(ckpt, Patch({adapter.param_name(2): (u, v)}), conv1d_names=adapter.conv1d_names())
    assert torch.equal(ckpt[adapter.param_name(2)], adapter.weight(2).detach())


def test_value_optimised_through_the_update_is_the_update_the_patch_writes(tiny):
    """ROME optimises δ with the rank-one update in the forward pass; the weights written must give
    the same model, at every position, in every family (Conv1D included)."""
    adapter, _, _ = tiny
    torch.manual_seed(2)
    ids = torch.randint(0, V, (3, 9))
    key = torch.randn(M, dtype=torch.float64)
    cov = torch.eye(M, dtype=torch.float64) + 0.1 * torch.ones(M, M, dtype=torch.float64)
    direction = input_direction(key, cov)
    assert torch.allclose(direction @ key, torch.tensor(1.0, dtype=torch.float64))
    delta = torch.randn(H)
    with torch.no_grad(), add_rank_one(adapter.mlp_out(1), direction[None].float().expand(3, -1), delta[None].expand(3, -1)):
        hooked = adapter.hidden_at(ids)
    saved = adapter.weight(1).detach().clone()
    try:
        add_low_rank(adapter, 1, delta[:, None], direction[:, None].float())
        with torch.no_grad():
            written = adapter.hidden_at(ids)
    finally:
        with torch.no_grad():
            adapter.weight(1).copy_(saved)
    torch.testing.assert_close(written, hooked, rtol=1e-4, atol=1e-4)


def test_memit_update_with_more_rows_than_rank_is_factored_exactly():
    torch.manual_seed(3)
    d, k, n = 8, 12, 40  # 40 key rows, but the weight is 8 × 12
    resid, keys = torch.randn(n, d), torch.randn(n, k)
    cov = torch.eye(k)
    u, v = layer_update(resid, keys, cov, lam=2.0)
    assert u.shape[1] == v.shape[1] == min(d, k)
    k64 = keys.double()
    expected = resid.double().T @ k64 @ torch.linalg.inv(2.0 * torch.eye(k, dtype=torch.float64) + k64.T @ k64)
    torch.testing.assert_close((u.double() @ v.double().T), expected, rtol=1e-4, atol=1e-5)


def test_unsupported_architecture_is_named():
    from transformers import BertConfig

    with pytest.raises(UnsupportedModelError, match="unsupported architecture 'bert'.*llama"):
        family_for(BertConfig())
