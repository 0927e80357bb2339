"""MEMIT through its own update (`--joint`): the directions are MEMIT's solve, and the patch writes
exactly the model the values were optimised on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from factpatch.editor.keys import keys_of_rows
from factpatch.editor.memit import MemitParams, batch_directions, direction_keys, layer_update
from factpatch.editor.pipeline import EditOptions, corpus_for, run_edit
from factpatch.editor.prompts import context_prefixes, encode
from factpatch.editor.stats import second_moments

from .conftest import fixture_edits, rome_layer


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


def test_paraphrase_keys_make_the_directions_read_held_out_phrasings(loaded, world):
    """The subject's key depends on the words before it, so directions fitted to the prompt alone read
    phrasings the edit never saw with less gain; fitting them to the paraphrases too raises that gain
    (what the update writes there) without raising what other subjects read."""
    edits = [e.model_copy(update={"paraphrases": world.trained_paraphrases(e.subject, e.relation)})
             for e in fixture_edits(world, 40, seed=23)]
    opts, lam = EditOptions(), MemitParams.joint().mom2_weight
    layer = rome_layer(loaded)  # --joint writes one layer, ROME's
    cov = second_moments(loaded.adapter, loaded.tok, [layer], corpus_for(loaded, None), opts.n_samples)[layer]
    prefixes = context_prefixes(loaded.model, loaded.tok, opts.memit.n_prefixes, seed=opts.seed)
    group = torch.arange(len(edits))  # one subject per edit
    held, owner = [], []
    for i, e in enumerate(edits):
        for t in world.heldout_paraphrases(e.subject, e.relation):
            held.append(encode(loaded.tok, t, e.subject))
            owner.append(i)
    held_keys, owner = keys_of_rows(loaded.adapter, loaded.tok, layer, held), torch.tensor(owner)
    others = torch.ones(len(held), len(edits), dtype=torch.bool)
    others[torch.arange(len(held)), owner] = False

    read = {}
    for with_paraphrases in (False, True):
        keys, row_group = direction_keys(loaded.adapter, loaded.tok, layer, edits, group, prefixes, with_paraphrases)
        assert len(keys) == len(edits) * len(prefixes) + (sum(len(e.paraphrases) for e in edits) if with_paraphrases else 0)
        gain = held_keys @ batch_directions(keys, row_group, len(edits), cov, lam)  # [held-out rows, subjects]
        read[with_paraphrases] = (gain[torch.arange(len(held)), owner], gain[others].abs().mean())
    (own_before, spill_before), (own_after, spill_after) = read[False], read[True]
    assert (own_after - 1).abs().mean() < (own_before - 1).abs().mean(), (own_before.mean(), own_after.mean())
    assert spill_after <= 1.1 * spill_before, (spill_before, spill_after)


def test_a_second_pass_moves_only_the_subjects_left_behind(loaded, world):
    """Subjects whose prompt, in its worst context, stays above `retry_above_nll` go on from their δ with
    the retry settings while every other δ stays fixed: the update changes by one rank per subject moved."""
    edits = fixture_edits(world, 8, seed=21, keep=True)
    joint = MemitParams.joint()
    short = dataclasses.replace(joint, value=dataclasses.replace(joint.value, steps=3))  # too few to finish
    first = run_edit(loaded, edits, EditOptions(method="memit", memit=short))
    worst = first.info["prompt_nll_max"]
    assert first.info["second_pass"] == [] and len(worst) == len(edits)
    cut = (sorted(worst)[-3] + sorted(worst)[-2]) / 2  # the worst two go again
    hp = dataclasses.replace(short, retry_value=dataclasses.replace(short.value, steps=30, weight_decay=0.05),
                             retry_above_nll=cut)
    stages = set()
    again = run_edit(loaded, edits, EditOptions(method="memit", memit=hp), on_progress=lambda s, d, t: stages.add(s))

    assert "values-retry" in stages
    subjects = [e.subject for e in edits]
    moved = again.info["second_pass"]
    assert [m["subject"] for m in moved] == [s for s, x in zip(subjects, worst) if x > cut]
    for m in moved:
        g = subjects.index(m["subject"])
        assert m["prompt_nll_max_first"] == worst[g] and m["nll_first"] == first.info["subject_nll"][g]  # the same first pass
        assert m["prompt_nll_max"] < m["prompt_nll_max_first"] and m["nll"] < m["nll_first"]
    [(u0, v0)], [(u1, v1)] = first.patch.factors.values(), again.patch.factors.values()  # one layer
    change = u1.double() @ v1.double().T - u0.double() @ v0.double().T
    assert torch.linalg.matrix_rank(change, rtol=1e-4) == 2


def test_the_second_pass_needs_the_joint_solve():
    with pytest.raises(ValueError, match="retry_value needs through_update"):
        MemitParams(retry_value=MemitParams().value)
    with pytest.raises(ValueError, match="retry_above_nll must be positive"):
        dataclasses.replace(MemitParams.joint(), retry_value=MemitParams().value, retry_above_nll=0.0)
