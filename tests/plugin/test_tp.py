"""Tensor-parallel slicing: every rank's share of u vᵀ, put back together, is the dense result."""

from __future__ import annotations

import pytest
import torch

from factpatch.plugin.tp import Split, compose, shard_range, slice_dense, slice_factors


def _factors(out=48, inp=64, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out, inp, generator=g), torch.randn(out, r, generator=g), torch.randn(inp, r, generator=g))


@pytest.mark.parametrize("tp", [2, 4])
def test_row_parallel_slices_rebuild_the_dense_weight_and_output(tp):
    w, u, v = _factors()
    dense = compose(w, u, v)
    blocks = []
    for k in range(tp):
        u_k, v_k = slice_factors(u, v, Split.ROW, tp, k)
        assert u_k is u  # u is whole on every rank
        a, b = shard_range(w.shape[1], tp, k)
        assert torch.equal(v_k, v[a:b])
        blocks.append(compose(slice_dense(w, Split.ROW, tp, k), u_k, v_k))
    torch.testing.assert_close(torch.cat(blocks, dim=1), dense, rtol=0, atol=1e-5)
    # Row-parallel layers sum the ranks' partial products: that sum is the dense product.
    x = torch.randn(5, w.shape[1])
    partial = sum(x[:, slice(*shard_range(w.shape[1], tp, k))] @ blocks[k].T for k in range(tp))
    torch.testing.assert_close(partial, x @ dense.T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tp", [2, 4])
def test_column_parallel_slices_rebuild_the_dense_weight(tp):
    w, u, v = _factors()
    dense = compose(w, u, v)
    blocks = []
    for k in range(tp):
        u_k, v_k = slice_factors(u, v, Split.COLUMN, tp, k)
        assert v_k is v
        blocks.append(compose(slice_dense(w, Split.COLUMN, tp, k), u_k, v_k))
    torch.testing.assert_close(torch.cat(blocks, dim=0), dense, rtol=0, atol=1e-5)


def test_replicated_takes_factors_whole():
    w, u, v = _factors()
    assert slice_factors(u, v, Split.REPLICATED, 4, 3) == (u, v)
    assert slice_dense(w, Split.REPLICATED, 4, 3) is w


def test_compose_matches_patchfile_arithmetic_bit_for_bit():
    from factpatch.core import patchfile
    w, u, v = _factors()
    for dtype in (torch.float32, torch.bfloat16):
        wd = w.to(dtype)
        state = {"x.weight": wd.clone()}
        patchfile.apply_to_state_dict(state, patchfile.Patch(factors={"x.weight": (u, v)}))
        assert torch.equal(compose(wd, u, v), state["x.weight"])


def test_uneven_split_is_refused():
    with pytest.raises(ValueError):
        shard_range(10, 4, 0)
    with pytest.raises(ValueError):
        shard_range(8, 2, 2)
