"""A patch chain's earlier edits held in MEMIT's solve (`chain_weight`): on known keys, the update reads
the held keys less the more they weigh, and still writes the new edit; the joint solve's directions do
the same."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from factpatch.editor.memit import MemitParams, batch_directions, layer_update


def _world(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k_dim, d = 24, 8
    corpus = torch.randn(400, k_dim, generator=g, dtype=torch.float64)
    cov = corpus.T @ corpus / len(corpus)
    new = torch.randn(3, k_dim, generator=g, dtype=torch.float64)
    # earlier edits' keys close to the new ones (a chain edits neighbouring subjects)
    held = new[torch.tensor([0, 1, 2, 0])] + 0.5 * torch.randn(4, k_dim, generator=g, dtype=torch.float64)
    resid = torch.randn(3, d, generator=g, dtype=torch.float64)
    return cov, new, held, resid


def _delta(u, v):
    return u.double() @ v.double().T


def test_held_keys_move_less_the_more_they_weigh():
    cov, new, held, resid = _world()
    moved = []
    for weight in (0.0, 1.0, 100.0):
        delta = _delta(*layer_update(resid, new, cov, lam=1.0, held=held, held_weight=weight))
        moved.append(float((delta @ held.T).norm()))
        written = delta @ new.T  # [d, 3]: what the update writes at each new key
        assert torch.nn.functional.cosine_similarity(written.T, resid, dim=-1).min() > 0.5
    assert moved[0] > 2 * moved[1] > 0 and moved[1] > 10 * moved[2]
    # without held rows, the weight changes nothing: MEMIT's solve as published
    plain = _delta(*layer_update(resid, new, cov, lam=1.0))
    assert torch.allclose(plain, _delta(*layer_update(resid, new, cov, lam=1.0, held=None, held_weight=100.0)))


def test_joint_directions_read_held_keys_less_and_keep_their_gain():
    cov, new, held, _ = _world(1)
    groups = torch.arange(3)
    free = batch_directions(new, groups, 3, cov, lam=1.0)
    kept = batch_directions(new, groups, 3, cov, lam=1.0, held=held, held_weight=100.0)
    assert (held @ kept).abs().max() < 0.2 * (held @ free).abs().max()
    assert torch.allclose((new * kept.T).sum(-1), torch.ones(3, dtype=torch.float64))  # gain 1 on its own key


def test_chain_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="chain_weight"):
        MemitParams(chain_weight=-1.0)


def test_a_joint_batch_on_a_chain_reads_the_earlier_edits_keys_less(loaded, world):
    """End to end on the fixture: the same joint batch computed with a parent chain's edits held
    (`chain_weight`, the --joint default) writes less at those edits' keys than with them ignored."""
    from factpatch.editor.keys import keys_of_rows
    from factpatch.editor.memit import apply_memit
    from factpatch.editor.pipeline import EditOptions, corpus_for
    from factpatch.editor.prompts import context_prefixes, encode
    from factpatch.editor.stats import second_moments
    from factpatch.editor.weights import restored_after

    from .conftest import fixture_edits, rome_layer

    edits = fixture_edits(world, 10, seed=31)
    earlier, batch = edits[:6], edits[6:]
    layer, opts = rome_layer(loaded), EditOptions()
    cov = second_moments(loaded.adapter, loaded.tok, [layer], corpus_for(loaded, None), opts.n_samples)[layer]
    prefixes = context_prefixes(loaded.model, loaded.tok, opts.memit.n_prefixes, seed=opts.seed)
    held = keys_of_rows(loaded.adapter, loaded.tok, layer, [encode(loaded.tok, e.prompt, e.subject) for e in earlier])
    joint = MemitParams.joint()
    assert joint.chain_weight > 0
    quick = replace(joint, value=replace(joint.value, steps=5))
    moved = {}
    for weight in (0.0, joint.chain_weight):
        with restored_after(loaded.adapter, [loaded.adapter.param_name(layer)]):
            factors, _ = apply_memit(loaded.adapter, loaded.tok, batch, [layer], {layer: cov}, prefixes,
                                     replace(quick, chain_weight=weight), protect=earlier)
        u, v = factors[layer]
        moved[weight] = float((u.double() @ (v.double().T @ held.T)).norm(dim=0).mean())
    assert moved[joint.chain_weight] < 0.6 * moved[0.0], moved
