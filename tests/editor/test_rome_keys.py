"""ROME's input direction: k* read in the edit's written paraphrases as well as behind the context
prefixes, and the direction that reads every written context with gain close to 1."""

from __future__ import annotations

import torch

from factpatch.editor.keys import keys_of_rows, subject_keys, written_context_keys
from factpatch.editor.pipeline import EditOptions, corpus_for
from factpatch.editor.prompts import context_prefixes, encode
from factpatch.editor.rome import (
    RomeParams,
    edit_directions,
    equal_gain_direction,
    input_direction,
    paraphrase_averaged_keys,
)
from factpatch.editor.stats import second_moments

from .conftest import fixture_edits, rome_layer


def _setting(loaded, world):
    """30 fixture edits written in their trained paraphrases, ROME's prefixes and its layer's covariance."""
    edits = [e.model_copy(update={"paraphrases": world.trained_paraphrases(e.subject, e.relation)})
             for e in fixture_edits(world, 30, seed=31)]
    opts = EditOptions(method="rome")
    prefixes = context_prefixes(loaded.model, loaded.tok, opts.rome.n_prefixes, seed=opts.seed)
    layer = rome_layer(loaded)
    cov = second_moments(loaded.adapter, loaded.tok, [layer], corpus_for(loaded, None), opts.n_samples)[layer]
    return edits, prefixes, cov


def _held_out_keys(loaded, world, edits):
    """(keys, edit index) of the subject in each of its relation's held-out phrasings."""
    held, owner = [], []
    for i, e in enumerate(edits):
        for t in world.heldout_paraphrases(e.subject, e.relation):
            held.append(encode(loaded.tok, t, e.subject))
            owner.append(i)
    return keys_of_rows(loaded.adapter, loaded.tok, rome_layer(loaded), held), torch.tensor(owner)


def test_paraphrase_keys_average_every_context_and_read_held_out_phrasings(loaded, world):
    """The key at ROME's layer depends on the words before the subject: a direction fitted to the prompt's
    contexts alone reads phrasings the edit never saw with a gain away from 1 (the rank-one update then
    writes too little or too much there); averaged over the written paraphrases too, it reads them closer."""
    adapter, tok = loaded.adapter, loaded.tok
    edits, prefixes, cov = _setting(loaded, world)
    layer = rome_layer(loaded)
    plain = subject_keys(adapter, tok, layer, edits, prefixes)
    averaged = paraphrase_averaged_keys(adapter, tok, layer, edits, plain, len(prefixes))

    # k* is the mean over every context row, each counted once: the prefixes' and the paraphrases'.
    first = edits[0]
    para = keys_of_rows(adapter, tok, layer, [encode(tok, p, first.subject) for p in first.paraphrases])
    expected = (plain[0] * len(prefixes) + para.sum(0)) / (len(prefixes) + len(para))
    assert torch.allclose(averaged[0], expected, atol=1e-6)  # keys from float32 passes of other batch shapes
    # An edit without paraphrases keeps the prefix average.
    bare = paraphrase_averaged_keys(adapter, tok, layer, [first.model_copy(update={"paraphrases": []})], plain[:1], len(prefixes))
    assert torch.equal(bare, plain[:1])

    held_keys, owner = _held_out_keys(loaded, world, edits)
    miss = {}
    for name, keys in (("prompt", plain), ("paraphrases", averaged)):
        directions = torch.stack([input_direction(k, cov) for k in keys])
        gain = (held_keys * directions[owner]).sum(-1)
        miss[name] = (gain - 1).abs()
    assert miss["paraphrases"].mean() < miss["prompt"].mean(), {k: float(v.mean()) for k, v in miss.items()}


def test_equal_gain_direction_spans_exact_gains_to_the_averaged_key():
    torch.manual_seed(0)
    a = torch.randn(16, 16, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(16, dtype=torch.float64)
    keys = torch.randn(5, 16, dtype=torch.float64) + 2.0
    exact = equal_gain_direction(keys, cov, 1e-9)
    assert torch.allclose(keys @ exact, torch.ones(5, dtype=torch.float64), atol=1e-6)
    loose = equal_gain_direction(keys, cov, 1e6)
    rome = input_direction(keys.mean(0), cov)
    assert torch.allclose(loose, rome, rtol=1e-4, atol=1e-9)
    assert abs(float((keys @ loose).mean()) - 1.0) < 1e-9
    # in between, gains spread less than ROME's, for more of the update's energy dᵀCd
    mid = equal_gain_direction(keys, cov, 0.1)
    assert (keys @ mid).std() < (keys @ rome).std()
    assert mid @ cov @ mid >= rome @ cov @ rome


def test_equal_gain_direction_reads_protected_rows_with_gain_near_zero():
    """Rows to leave alone are read with gain near 0 (exactly, as the ridge goes to 0), even when they lie
    close to the keys written, while the written keys keep a mean gain of exactly 1."""
    torch.manual_seed(1)
    a = torch.randn(16, 16, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(16, dtype=torch.float64)
    keys = torch.randn(4, 16, dtype=torch.float64) + 2.0
    near = keys[:3] + 0.3 * torch.randn(3, 16, dtype=torch.float64)  # other subjects asked the same way
    free = equal_gain_direction(keys, cov, 0.1)
    same = equal_gain_direction(keys, cov, 0.1, near)  # protected rows at the written rows' ridge
    held = equal_gain_direction(keys, cov, 0.1, near, 0.001)
    assert abs(float((keys @ held).mean()) - 1.0) < 1e-9
    assert (near @ held).abs().max() < 0.1 * (near @ same).abs().max() < (near @ free).abs().max(), (near @ held, near @ same, near @ free)
    exact = equal_gain_direction(keys, cov, 1e-10, near)
    assert torch.allclose(near @ exact, torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(keys @ exact, torch.ones(4, dtype=torch.float64), atol=1e-5)
    # nothing to protect: the same direction as without the argument
    assert torch.equal(equal_gain_direction(keys, cov, 0.1, keys[:0]), free)


def test_edit_directions_read_written_and_held_out_contexts_evenly(loaded, world):
    """C⁻¹k* reads the subject's key in some of the contexts an edit is written in with another gain than
    in others; the equal-gain direction reads the written contexts nearer 1, and held-out phrasings too."""
    adapter, tok = loaded.adapter, loaded.tok
    edits, prefixes, cov = _setting(loaded, world)
    layer = rome_layer(loaded)
    rows = written_context_keys(adapter, tok, layer, edits, prefixes)
    held_keys, owner = _held_out_keys(loaded, world, edits)
    written_miss, held_miss = {}, {}
    for name, ridge in (("average", None), ("equal", RomeParams().equal_gain_ridge)):
        dirs = edit_directions(adapter, tok, layer, edits, cov, prefixes, RomeParams(equal_gain_ridge=ridge))
        written_miss[name] = torch.cat([(r @ d - 1).abs() for r, d in zip(rows, dirs)])
        held_miss[name] = ((held_keys * torch.stack(dirs)[owner]).sum(-1) - 1).abs()
    report = {k: (float(written_miss[k].max()), float(held_miss[k].mean()), float(held_miss[k].max())) for k in written_miss}
    assert written_miss["equal"].max() < 0.5 * written_miss["average"].max(), report
    assert held_miss["equal"].mean() < held_miss["average"].mean(), report
