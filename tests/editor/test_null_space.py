"""The null-space projected solve (AlphaEdit) on known keys: what the corpus keys span is not read by the
update, an edit's key in the empty directions gets its value, and a chain's earlier keys are left alone."""

from __future__ import annotations

import pytest
import torch

from factpatch.editor.memit import MemitParams, null_space_projector, projected_update


def test_the_update_leaves_the_corpus_span_and_earlier_keys_alone():
    g = torch.Generator().manual_seed(0)
    k_dim, d = 16, 8
    basis = torch.linalg.qr(torch.randn(k_dim, k_dim, generator=g, dtype=torch.float64))[0]
    used, empty = basis[:, :6], basis[:, 6:]  # the corpus keys live in 6 of 16 directions
    corpus = torch.randn(200, 6, generator=g, dtype=torch.float64) @ used.T
    cov = corpus.T @ corpus / len(corpus)
    proj = null_space_projector(cov, 1e-6)
    assert torch.allclose(proj @ used, torch.zeros_like(used), atol=1e-8) and torch.allclose(proj @ empty, empty, atol=1e-8)

    key = (empty @ torch.randn(10, generator=g, dtype=torch.float64)).unsqueeze(0)  # an edit's key
    earlier = (empty @ torch.randn(10, 3, generator=g, dtype=torch.float64)).T  # keys of a parent's edits
    resid = torch.randn(1, d, generator=g, dtype=torch.float64)
    u, v = projected_update(resid, key, proj, earlier, l2=1e-6)
    delta = (u.double() @ v.double().T)  # [d, k]
    assert torch.allclose(delta @ corpus.T, torch.zeros(d, len(corpus), dtype=torch.float64), atol=1e-4)
    assert torch.allclose(delta @ key.T, resid.T, atol=1e-3)  # the edit is written
    assert (delta @ earlier.T).norm() < 1e-3 * (delta @ key.T).norm()  # earlier edits keep their outputs
    u0, v0 = projected_update(resid, key, proj, None, l2=1e-6)
    assert ((u0.double() @ v0.double().T) @ earlier.T).norm() > 10 * (delta @ earlier.T).norm()  # without them they move


def test_null_space_settings_are_checked():
    with pytest.raises(ValueError, match="null_space"):
        MemitParams(null_space=2.0)
    with pytest.raises(ValueError, match="through_update"):
        MemitParams(null_space=1e-4, through_update=True)
