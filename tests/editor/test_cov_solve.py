"""C⁻¹x from one factorisation of a layer's covariance: the same solutions as a solve from C each time,
and one factorisation per layer for a whole sequence of ROME edits instead of one per edit."""

from __future__ import annotations

import torch

from factpatch.editor import cov_solve
from factpatch.editor.cov_solve import CovSolver
from factpatch.editor.pipeline import EditOptions, corpus_for
from factpatch.editor.prompts import context_prefixes
from factpatch.editor.rome import apply_rome, equal_gain_direction, input_direction
from factpatch.editor.stats import second_moments
from factpatch.editor.weights import restore, snapshot

from .conftest import fixture_edits, rome_layer


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3 * d, d, generator=g)
    return (a.T @ a / (3 * d)).float()


def test_solutions_match_a_solve_from_c_for_vectors_and_matrices():
    c = _spd(48, 0)
    solve = CovSolver(c)
    k = torch.randn(48, dtype=torch.float64)
    rows = torch.randn(48, 5, dtype=torch.float64)
    exact = torch.linalg.solve(c.double(), torch.stack([k, *rows.T], 1))
    assert torch.allclose(solve(k), exact[:, 0], rtol=1e-9, atol=1e-12)
    assert torch.allclose(solve(rows), exact[:, 1:], rtol=1e-9, atol=1e-12)
    assert solve(k).dtype == torch.float64 and solve._cholesky is not None
    # The directions built on it are the ones built on C itself.
    assert torch.allclose(input_direction(k, solve), input_direction(k, c), rtol=1e-9)
    assert torch.allclose(equal_gain_direction(rows.T, solve, 0.1), equal_gain_direction(rows.T, c, 0.1), rtol=1e-8)


def test_a_covariance_that_is_not_positive_definite_is_solved_by_lu():
    c = _spd(16, 1).double()
    w, v = torch.linalg.eigh(c)
    w[0] = -abs(float(w[1]))  # indefinite: no Cholesky factor exists
    c = (v * w) @ v.T
    solve = CovSolver(c)
    k = torch.randn(16, dtype=torch.float64)
    assert torch.allclose(solve(k), torch.linalg.solve(c, k), rtol=1e-8)
    assert solve._cholesky is None and solve._lu is not None


def test_a_sequence_of_rome_edits_factorises_c_once(loaded, world, monkeypatch):
    made = []
    real = CovSolver._factorise

    def counted(self):
        made.append(self.dim)
        real(self)

    monkeypatch.setattr(cov_solve.CovSolver, "_factorise", counted)
    opts = EditOptions(method="rome")
    layer = rome_layer(loaded)
    cov = second_moments(loaded.adapter, loaded.tok, [layer], corpus_for(loaded, None), opts.n_samples)[layer]
    prefixes = context_prefixes(loaded.model, loaded.tok, opts.rome.n_prefixes, seed=opts.seed)
    edits = fixture_edits(world, 3, seed=41)
    saved = snapshot(loaded.adapter, [layer])
    try:
        written, info = apply_rome(loaded.adapter, loaded.tok, edits, layer, cov, prefixes, opts.rome)
    finally:
        restore(loaded.adapter, saved)
    assert len(info) == 3 and written[layer][0].shape[1] == 3
    assert made == [cov.shape[0]]  # once for three edits (before: once per edit)
