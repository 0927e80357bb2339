"""MEMIT through its own update (`--joint`): the directions are MEMIT's solve, and the patch writes
exactly the model the values were optimised on."""

from __future__ import annotations

import torch

from factpatch.editor.memit import MemitParams, batch_directions, layer_update
from factpatch.editor.pipeline import EditOptions, evaluate_patch, run_edit

from .conftest import fixture_edits


def test_directions_are_memit_s_solve_for_one_delta_per_subject():
    g = torch.Generator().manual_seed(0)
    k, d, groups = 24, 8, torch.tensor([0, 0, 0, 1, 1, 2])
    keys = torch.randn(6, k, generator=g, dtype=torch.float64)
    a = torch.randn(k, k, generator=g, dtype=torch.float64)
    cov = a @ a.T / k + 0.1 * torch.eye(k, dtype=torch.float64)
    dirs = batch_directions(keys, groups, 3, cov, 2.0)
    # each subject's rows read gain 1 on average from their own direction
    gain = (keys * dirs.T[groups]).sum(-1)
    for s in range(3):
        assert torch.isclose(gain[groups == s].mean(), torch.tensor(1.0, dtype=torch.float64))
    # Σ_g δ_g ⊗ direction_g is the MEMIT update whose rows all ask their subject's δ (rescaled by the gain)
    delta = torch.randn(3, d, generator=g, dtype=torch.float64)
    raw = torch.linalg.solve(2.0 * cov + keys.T @ keys, torch.zeros(3, k, dtype=torch.float64).index_add(0, groups, keys).T)
    scale = (raw / dirs)[0]  # the per-subject normalisation
    u, v = layer_update((delta / scale[:, None])[groups], keys, cov, 2.0)
    joint = delta.T @ dirs.T
    assert torch.allclose(u.double() @ v.double().T, joint, atol=1e-5, rtol=1e-4)


def test_joint_batch_writes_one_layer_and_the_edits_take(loaded, world):
    edits = fixture_edits(world, 8, seed=21, keep=True)
    result = run_edit(loaded, edits, EditOptions(method="memit", memit=MemitParams.joint()))
    assert result.layers == [0] and result.patch.manifest["layers"] == [0]  # one layer, at ROME's depth
    assert result.patch.manifest["hparams"]["through_update"] is True
    m = evaluate_patch(loaded, result.patch, edits, [])["metrics"]
    # what the optimiser saw is what the patch writes, so nearly every edit says its target
    assert m["efficacy"] >= 7 / 8, m
    assert m["neighbours_unchanged"] >= 0.8, m
