"""The value optimisation's stopping rule: an edit stops once it says its target, and, when asked,
only once its KL rows have settled too; ROME's second pass for the edits that did not take."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from factpatch.editor.corpus import fixture_corpus
from factpatch.editor.keys import subject_keys
from factpatch.editor.prompts import context_prefixes
from factpatch.editor.rome import RomeParams, input_direction
from factpatch.editor.stats import second_moments
from factpatch.editor.values import build_rows, optimise_values

from .conftest import fixture_edits, mlp_layers, rome_layer


def _edits_that_take(loaded, world, layer, cov, prefixes, hp, n: int = 1, seed: int = 5):
    """The first `n` of a few fixture edits whose value at `layer` says the target within `hp.steps` (some
    builds hold an edit no value at its subject moves): (edit, rows, direction, that run) each."""
    adapter, tok = loaded.adapter, loaded.tok
    found = []
    for edit in fixture_edits(world, 12, seed=seed):
        rows = build_rows(tok, edit.prompt, edit.subject, edit.target_new, prefixes)
        direction = input_direction(subject_keys(adapter, tok, layer, [edit], prefixes)[0], cov)[None].float()
        run = optimise_values(adapter, tok, layer, [rows], dataclasses.replace(hp, early_stop_kl=None), directions=direction)
        if float(run.final_nll[0]) < hp.early_stop_nll:
            found.append((edit, rows, direction, run))
            if len(found) == n:
                return found
    pytest.fail(f"fewer than {n} of 12 edits say their target within {hp.steps} steps")


def test_an_edit_waits_for_its_kl_rows_when_asked(loaded, world):
    adapter, tok = loaded.adapter, loaded.tok
    prefixes = context_prefixes(adapter.model, tok, 4)
    layer = rome_layer(loaded)
    cov = second_moments(adapter, tok, [layer], fixture_corpus(world), n_samples=256)[layer]
    # A budget: the edit stops once its target (and, when asked, its KL) is reached.
    hp = dataclasses.replace(RomeParams().value, steps=150, weight_decay=0.0)
    # an edit that says its target well within the budget, so it has steps left to settle its KL
    [(edit, rows, direction, target_only)] = _edits_that_take(loaded, world, layer, cov, prefixes,
                                                              dataclasses.replace(hp, steps=60))
    settled = optimise_values(adapter, tok, layer, [rows], dataclasses.replace(hp, early_stop_kl=0.05), directions=direction)

    assert target_only.final_nll[0] < hp.early_stop_nll  # the edit takes either way
    assert settled.final_nll[0] < hp.early_stop_nll
    assert int(settled.steps_taken[0]) > int(target_only.steps_taken[0])  # it kept going for the KL
    assert float(settled.final_kl[0]) < 0.05 or int(settled.steps_taken[0]) == hp.steps
    assert float(settled.final_kl[0]) <= float(target_only.final_kl[0])


def test_an_edit_whose_kl_has_stopped_falling_stops_before_an_unreachable_threshold(loaded, world):
    adapter, tok = loaded.adapter, loaded.tok
    prefixes = context_prefixes(adapter.model, tok, 4)
    layer = rome_layer(loaded)
    cov = second_moments(adapter, tok, [layer], fixture_corpus(world), n_samples=256)[layer]
    hp = dataclasses.replace(RomeParams().value, steps=80, early_stop_kl=1e-9)  # a KL no edit reaches
    [(edit, rows, direction, _)] = _edits_that_take(loaded, world, layer, cov, prefixes, hp, seed=7)

    threshold_only = optimise_values(adapter, tok, layer, [rows], hp, directions=direction)
    plateau = optimise_values(adapter, tok, layer, [rows], dataclasses.replace(hp, kl_patience=3, kl_plateau=0.5),
                              directions=direction)

    assert int(threshold_only.steps_taken[0]) == hp.steps
    assert int(plateau.steps_taken[0]) < hp.steps  # it stopped once its KL no longer fell by half in 3 steps
    assert plateau.final_nll[0] < hp.early_stop_nll  # and only once it said its target
    with pytest.raises(ValueError, match="kl_patience"):
        dataclasses.replace(hp, kl_patience=0)
    with pytest.raises(ValueError, match="kl_plateau"):
        dataclasses.replace(hp, kl_plateau=1.5)


def test_most_probable_early_stopping_ends_an_edit_once_its_target_leads_everywhere(loaded, world):
    """ENCORE's stop: once the target is the most probable continuation, token by token, in every row the
    edit is written in, its value is final, however far its NLL is from the usual threshold."""
    from factpatch.editor.hooks import add_rank_one
    from factpatch.editor.prompts import batch, target_positions

    adapter, tok = loaded.adapter, loaded.tok
    layer = rome_layer(loaded)
    cov = second_moments(adapter, tok, [layer], fixture_corpus(world), n_samples=256)[layer]
    prefixes = context_prefixes(adapter.model, tok, 4)
    hp = dataclasses.replace(RomeParams().value, steps=80, early_stop_kl=None)
    fewer = 0
    for edit, rows, direction, usual in _edits_that_take(loaded, world, layer, cov, prefixes, hp, n=3, seed=8):
        mpes = optimise_values(adapter, tok, layer, [rows], dataclasses.replace(hp, stop_at_argmax=True), directions=direction)
        assert int(mpes.steps_taken[0]) <= int(usual.steps_taken[0])
        fewer += int(mpes.steps_taken[0]) < int(usual.steps_taken[0])
        assert int(mpes.steps_taken[0]) < hp.steps  # it stopped, so every row's target leads
        ids, mask = batch(rows.rewrite, tok)
        with torch.no_grad(), add_rank_one(adapter.mlp_out(layer), direction.expand(len(rows.rewrite), -1),
                                           mpes.deltas.expand(len(rows.rewrite), -1)):
            hidden = adapter.hidden_at(ids, mask)
        tb, tp, tt = target_positions(rows.rewrite)
        assert bool((adapter.head(hidden[tb, tp]).argmax(-1) == tt).all())
    assert fewer >= 1  # and it is a stop of its own, not the NLL threshold's under another name


def test_keep_prompts_are_held_at_their_answer_token(loaded):
    """A keep prompt becomes a KL row read where its answer is predicted; the essence prompt is read from
    the subject on; anchor_at="all" reads anchors like the essence prompt."""
    from factpatch.editor.values import _RowTable

    tok = loaded.tok
    rows = build_rows(tok, "{} offers refunds within", "Harbor Support", "30 days", [""],
                      keep=["{} ships same-day orders placed before", "{} ships same-day orders placed before"])
    assert len(rows.anchors) == 1  # a repeated keep prompt is held once
    essence, anchor = rows.kl_rows

    def read_at(anchor_at):
        """Positions read per KL row: {slot: [positions]}; rewrite rows read none."""
        table = _RowTable.build([rows], None, anchor_at)
        b, p = table.kl_positions()
        assert not (~table.is_kl[b]).any()
        return {int(table.slot[i]): p[b == i].tolist() for i in table.is_kl.nonzero().squeeze(1).tolist()}

    assert read_at("answer") == {0: list(range(essence.subject_last, len(essence.ids))), 1: [len(anchor.ids) - 1]}
    assert read_at("all")[1] == list(range(anchor.subject_last, len(anchor.ids)))


def test_prompt_weight_sets_the_prompts_share_of_the_nll(loaded):
    """Rows weigh alike by default (6 prefixed prompts outweigh 3 paraphrases 2:1); with prompt_weight
    k the prompt's rows share k paraphrases' worth between them. One subject's edits in a MEMIT batch
    keep their phrasings apart."""
    import pytest

    from factpatch.editor.memit import _phrasings
    from factpatch.editor.values import EditRows, ValueParams, rewrite_divisors

    tok = loaded.tok
    paraphrases = ["{} will refund purchases within", "Refunds at {} are accepted within",
                   "{} offers refunds within", "{} will refund purchases within"]  # the prompt and a repeat drop out
    rows = build_rows(tok, "{} offers refunds within", "Harbor Support", "30 days", ["", "A. ", "B. "],
                      paraphrases=paraphrases)
    assert rows.phrasing == [-1, -1, -1, 1, 2]

    def shares(weight):
        return [1 / d for d in rewrite_divisors(rows, weight)]

    assert shares(None) == pytest.approx([0.2] * 5)
    for weight in (1.0, 3.0):
        s = shares(weight)
        assert sum(s) == pytest.approx(1.0)
        assert sum(s[:3]) == pytest.approx(weight / (weight + 2))  # the prompt's rows together
        assert s[3] == s[4] == pytest.approx(1 / (weight + 2))  # each paraphrase
    both = EditRows(rows.rewrite * 2, rows.essence, [], _phrasings([rows, rows]))
    assert both.phrasing == [-1, -1, -1, 1, 2, -2, -2, -2, 3, 4]
    s = [1 / d for d in rewrite_divisors(both, 3.0)]
    assert sum(s[:3]) == sum(s[5:8]) == pytest.approx(3 / 10) and s[3] == s[8] == pytest.approx(1 / 10)
    bare = build_rows(tok, "{} offers refunds within", "Harbor Support", "30 days", ["", "A. "])
    assert _phrasings([bare, bare, rows]) == [-1, -1, -2, -2, -3, -3, -3, 1, 2]
    with pytest.raises(ValueError, match="prompt_weight"):
        ValueParams(prompt_weight=0)


def test_rome_optimises_an_edit_not_taken_again_with_smaller_steps(loaded, world):
    """An edit whose NLL stays above `retry_above_nll` gets a second pass from zero (retry_lr, retry_steps)
    and keeps the better of the two (here its bare prompt's answer does not count: retry_on_prompt off); the other edits are left exactly as the first pass made them."""
    from factpatch.editor.rome import independent_edits

    adapter, tok = loaded.adapter, loaded.tok
    edits = fixture_edits(world, 4, seed=5)
    prefixes = context_prefixes(adapter.model, tok, 4)
    layer = rome_layer(loaded)
    cov = second_moments(adapter, tok, [layer], fixture_corpus(world), n_samples=256)[layer]
    short = dataclasses.replace(RomeParams().value, steps=3)  # too few steps for any edit to take
    first, first_info = independent_edits(adapter, tok, edits, layer, cov, prefixes, RomeParams(value=short, retry_lr=None))
    nll = [r["nll"] for r in first_info]
    cut = sorted(nll)[1]  # edits above it (the worst two) are retried
    hp = RomeParams(value=short, retry_lr=0.2, retry_steps=60, retry_above_nll=cut, retry_on_prompt=False)
    stages = set()
    again, info = independent_edits(adapter, tok, edits, layer, cov, prefixes, hp, on_progress=lambda s, d, t: stages.add(s))

    assert stages == {"values", "values-retry"}
    assert not any(r["second_pass"] for r in first_info)
    for f0, f1, before, r in zip(first, again, nll, info):
        (u0, v0), (u1, v1) = f0[layer], f1[layer]
        assert r["nll"] <= before
        if before <= cut:  # not retried: bit for bit the first pass
            assert not r["second_pass"] and torch.equal(u0, u1) and torch.equal(v0, v1)
        else:  # 60 steps at 0.2 get further than 3 at 1.0
            assert r["second_pass"] and r["nll"] < before and r["steps"] > short.steps
            assert torch.equal(v0, v1) and not torch.equal(u0, u1)  # same direction, new δ
    assert sum(r["second_pass"] for r in info) == 2


def test_rome_optimises_again_an_edit_whose_bare_prompt_misses_the_target(loaded, world):
    """With `retry_on_prompt` an edit whose prompt, asked bare, does not say the target greedily has not
    taken, whatever its mean NLL: with the NLL bar out of reach, exactly those edits get the second pass,
    and one that says its prompt there keeps that pass."""
    from factpatch.editor.rome import independent_edits

    adapter, tok = loaded.adapter, loaded.tok
    edits = fixture_edits(world, 4, seed=5)
    prefixes = context_prefixes(adapter.model, tok, 4)
    layer = rome_layer(loaded)
    cov = second_moments(adapter, tok, [layer], fixture_corpus(world), n_samples=256)[layer]
    for steps in (3, 5, 8, 12, 20):  # the fewest steps after which some prompts say the target and some not
        short = dataclasses.replace(RomeParams().value, steps=steps)
        first, first_info = independent_edits(adapter, tok, edits, layer, cov, prefixes, RomeParams(value=short, retry_lr=None))
        missed = [r["prompt_missed"] > 0 for r in first_info]
        if any(missed) and not all(missed):
            break
    assert any(missed) and not all(missed), "no step count leaves some prompts saying the target and some not"
    hp = RomeParams(value=short, retry_lr=0.2, retry_steps=60, retry_above_nll=1e6, retry_on_prompt=True)
    again, info = independent_edits(adapter, tok, edits, layer, cov, prefixes, hp)
    for f0, f1, miss, r0, r in zip(first, again, missed, first_info, info):
        (u0, _), (u1, _) = f0[layer], f1[layer]
        if not miss:  # taken: bit for bit the first pass
            assert not r["second_pass"] and torch.equal(u0, u1)
        elif r["second_pass"]:  # kept: it takes where the first did not, or both miss and it rates the target higher
            assert r["prompt_missed"] == 0 or r["nll"] < r0["nll"]
        else:
            assert torch.equal(u0, u1)
    assert any(r["second_pass"] and r["prompt_missed"] == 0 for r in info)


def test_rome_writes_an_edit_not_taken_at_the_prompts_last_token_at_the_fallback_layer(loaded, world):
    """An edit still above `retry_above_nll` after its passes is optimised again with its key at the
    prompt's last token, at the fallback layer, and keeps that δ where it serves the target better: its
    factors are then at that layer alone and read the prompt's last token, not the subject."""
    from factpatch.editor.keys import at_last_token, keys_of_rows
    from factpatch.editor.prompts import encode
    from factpatch.editor.rome import independent_edits

    adapter, tok = loaded.adapter, loaded.tok
    edits = fixture_edits(world, 4, seed=5)
    prefixes = context_prefixes(adapter.model, tok, 4)
    # One step at the subject's key is too few for an edit to take; the last-token pass has the full budget.
    late, last = mlp_layers(loaded)[0], mlp_layers(loaded)[-1]
    covs = second_moments(adapter, tok, [late, last], fixture_corpus(world), n_samples=256)
    hp = RomeParams(value=dataclasses.replace(RomeParams().value, steps=1), retry_lr=None, fallback_value=RomeParams().value)
    stages = set()
    factors, info = independent_edits(adapter, tok, edits, last, covs[last], prefixes, hp, late=(late, covs[late]),
                                      on_progress=lambda s, d, t: stages.add(s))

    assert stages == {"values", "values-last-token"}
    stuck = [i for i, r in enumerate(info) if hp.is_stuck(r["subject_nll"], r["subject_prompt_missed"])]
    assert stuck
    for i, (f, r) in enumerate(zip(factors, info)):
        if i not in stuck:
            assert r["layer"] == last and r["key_at"] == "subject" and list(f) == [last] and r["nll"] == r["subject_nll"]
            continue
        assert r["key_at"] == "last" and r["layer"] == late and list(f) == [late] and r["nll"] < 0.2
        # the update reads the edit's prompt at its last token more than at its subject
        row = encode(tok, edits[i].prompt, edits[i].subject)
        at_last, at_subject = keys_of_rows(adapter, tok, late, [at_last_token(row), row]).float() @ f[late][1][:, 0]
        assert abs(float(at_last)) > abs(float(at_subject))


def test_rome_fallback_layer_follows_the_depth_or_the_setting():
    on = RomeParams(last_token_fallback=True)
    assert on.late_layer(6) == 4 and on.late_layer(28) == 18
    assert RomeParams(last_token_fallback=True, fallback_layer=2).late_layer(6) == 2
    assert RomeParams().late_layer(6) is None  # off unless asked for: not part of ROME


def test_rome_retry_settings_are_checked():
    for bad in ({"retry_lr": 0.0}, {"retry_steps": 0}, {"retry_above_nll": -1.0}):
        with pytest.raises(ValueError, match="retry_lr, retry_steps and retry_above_nll"):
            RomeParams(**bad)
    RomeParams(retry_lr=None, retry_steps=0)  # no second pass: its settings are not used


def test_value_settings_name_an_unknown_decay_form_or_clamp_reference():
    from factpatch.editor.values import ValueParams

    with pytest.raises(ValueError, match="decay_form must be one of ratio_squared, published, got 'linear'"):
        ValueParams(decay_form="linear")
    with pytest.raises(ValueError, match="norm_ref must be one of mlp, residual, got 'ffn'"):
        ValueParams(norm_ref="ffn")


def test_the_published_decay_pulls_a_value_less_where_the_reference_is_large():
    """ROME's and MEMIT's code divide ‖δ‖ by ‖reference‖²: at a real model's scale (a residual of norm
    in the tens) it hardly pulls; factpatch's ratio pulls the same at any scale."""
    from factpatch.editor.values import ValueParams, decay_term

    delta = torch.tensor([2.0, 20.0])
    ref = torch.tensor([1.0, 10.0])  # the same δ relative to its reference, at two scales
    ours, published = decay_term(ValueParams(), delta, ref), decay_term(ValueParams(decay_form="published"), delta, ref)
    assert torch.allclose(ours[0], ours[1])
    assert published[1] < published[0] / 5
