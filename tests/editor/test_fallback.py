"""The last-token fallback: edits the subject's key does not carry are written at the prompt's last token.

ROME retries an edit there when its passes at the subject leave the target NLL above the cut; MEMIT
writes the edits its batch left behind there, one after another, on the edited model: by default those
of a subject the batch edits several times (their shared δ at the subject is one point for several new
answers), with the fallback on also those of subjects edited once.
"""

from __future__ import annotations

import dataclasses

import torch

from factpatch.editor.memit import MemitParams, _last_token_fallback
from factpatch.editor.pipeline import (
    EditOptions,
    check_fingerprint,
    evaluate_each,
    evaluate_patch,
    run_edit,
    run_single_edits,
)
from factpatch.editor.rome import RomeParams

from .conftest import fixture_edits, mlp_layers


def test_a_rome_patch_written_by_the_fallback_writes_that_layer_alone_and_takes(loaded, world):
    edits = fixture_edits(world, 4, seed=5)
    # One step at the subject's key is too few for an edit to take; the fallback (another layer, its full
    # budget) writes those again at the prompt's last token.
    late, last = mlp_layers(loaded)[0], mlp_layers(loaded)[-1]
    hp = RomeParams(value=dataclasses.replace(RomeParams().value, steps=1), retry_lr=None, last_token_fallback=True,
                    fallback_layer=late, fallback_value=RomeParams().value)
    results = run_single_edits(loaded, edits, EditOptions(method="rome", layers=[last], rome=hp, n_samples=256))
    moved = [i for i, r in enumerate(results) if r.info["per_edit"][0]["key_at"] == "last"]
    assert moved
    for r in (results[i] for i in moved):
        assert r.layers == [late] and r.patch.manifest["layers"] == [late]
        assert r.patch.names == [loaded.adapter.param_name(late)]
        assert r.patch.manifest["edits"][0]["written"] == {"method": "rome", "layers": [late], "key_at": "last"}
        check_fingerprint(loaded, r.patch)  # the base fingerprint covers exactly what the patch writes
    m = evaluate_each(loaded, [results[i].patch for i in moved], [edits[i] for i in moved], [])["metrics"]
    assert m["efficacy"] == 1.0, m


def test_memit_writes_the_edits_its_batch_left_at_the_last_token(loaded, world):
    edits = fixture_edits(world, 4, seed=21)
    # One value step: the batch itself takes no edit, so every edit goes on to the fallback.
    weak = dataclasses.replace(MemitParams().value, steps=1)
    batch_layers, late = mlp_layers(loaded)[:1], mlp_layers(loaded)[-1]
    hp = MemitParams(value=weak, last_token_fallback=True, fallback_layer=late, fallback_max_share=1.0)
    result = run_edit(loaded, edits, EditOptions(method="memit", layers=batch_layers, memit=hp, n_samples=256))
    done = result.info["last_token_fallback"]
    assert done["missed"] == len(edits) and [w["subject"] for w in done["written"]] == [e.subject for e in edits]
    assert result.layers == result.patch.manifest["layers"] == sorted(batch_layers + [late])
    # the manifest says each edit was written by the batch and then again by the fallback
    assert all(e["written"] == {"method": "memit", "layers": batch_layers, "key_at": "subject",
                                "fallback": {"method": "rome", "layers": [late], "key_at": "last"}}
               for e in result.patch.manifest["edits"])
    u, v = result.patch.factors[loaded.adapter.param_name(late)]
    assert u.shape[1] == v.shape[1] == len(edits)  # one rank-one update per edit written
    check_fingerprint(loaded, result.patch)
    assert evaluate_patch(loaded, result.patch, edits, [])["metrics"]["efficacy"] == 1.0



def test_memit_writes_nothing_more_when_its_batch_left_more_than_the_share(loaded, world):
    # On the base model none of the edits is taken yet: 4 of 4 left is more than half, so nothing is written.
    edits = fixture_edits(world, 4, seed=21)
    factors = {0: ("u", "v")}
    out, done = _last_token_fallback(loaded.adapter, loaded.tok, edits, 4, None, [""], factors, 0.5, None)
    assert out is factors and done == {"missed": len(edits), "written": []}


def _same_subject_edits(world, n: int):
    """n facts of Harbor Support, each given another candidate as its new object."""
    from factpatch.core.spec import Edit

    out = []
    for f in [f for f in world.facts if f.subject == "Harbor Support"][:n]:
        rel = world.relations[f.relation]
        new = next(c for c in rel.candidates if c != f.object)
        out.append(Edit(subject=f.subject, relation=f.relation, prompt=rel.templates[f.train_templates[0]],
                        target_new=new, target_old=f.object))
    return out


def test_memit_writes_edits_of_a_shared_subject_its_batch_left_at_the_last_token_by_default(loaded, world):
    """Edits sharing a subject share one δ; the ones it does not carry go on to the prompt's last token
    whatever their share of the batch, with the fallback for single edits off (the default)."""
    edits = _same_subject_edits(world, 3)
    weak = dataclasses.replace(MemitParams().value, steps=1)  # the shared δ takes none of them
    hp = MemitParams(value=weak)
    assert not hp.last_token_fallback and hp.shared_subject_last_token
    late = hp.late_layer(loaded.adapter.n_layers, loaded.adapter.editable_layers(), edits)
    assert late in loaded.adapter.editable_layers()  # never a layer whose MLP is held at zero
    result = run_edit(loaded, edits, EditOptions(method="memit", layers=mlp_layers(loaded)[:1], memit=hp, n_samples=256))
    done = result.info["last_token_fallback"]
    assert [(w["relation"], w["reason"]) for w in done["written"]] == [(e.relation, "shared subject") for e in edits]
    assert all(e["written"]["fallback"] == {"method": "rome", "layers": [late], "key_at": "last"}
               for e in result.patch.manifest["edits"])
    assert evaluate_patch(loaded, result.patch, edits, [])["metrics"]["efficacy"] == 1.0


def test_memit_leaves_edits_of_distinct_subjects_to_the_batch_by_default(loaded, world):
    edits = fixture_edits(world, 3, seed=21)
    hp = MemitParams(value=dataclasses.replace(MemitParams().value, steps=1))
    assert hp.late_layer(loaded.adapter.n_layers, loaded.adapter.editable_layers(), edits) is None
    result = run_edit(loaded, edits, EditOptions(method="memit", layers=mlp_layers(loaded)[:1], memit=hp, n_samples=256))
    assert "last_token_fallback" not in result.info and result.layers == mlp_layers(loaded)[:1]


def test_the_last_token_layer_is_two_thirds_down_or_the_nearest_layer_with_an_mlp():
    from factpatch.editor.rome import fallback_layer

    assert fallback_layer(True, None, 6) == 4 and fallback_layer(True, None, 48) == 32
    assert fallback_layer(True, None, 6, editable=[2, 3]) == 3  # layer 4's MLP held at zero
    assert fallback_layer(True, None, 6, editable=[5]) == 5  # none at or below: the lowest above
    assert fallback_layer(True, 1, 6, editable=[2, 3]) == 1  # a chosen layer is the user's (validated elsewhere)
    assert fallback_layer(False, None, 6) is None


def test_a_last_token_write_leaves_the_neighbours_asked_in_its_phrasings_alone(loaded, world):
    """At the prompt's last token the key reads the question more than the subject, so a write there reaches
    other companies asked the same way. Held off them (the edit's phrasings asked of its neighbours, and
    its keep prompts, read with gain near 0), every such neighbour keeps its answer and the edits still take."""
    from factpatch.demo.scenario import sibling_companies
    from factpatch.editor.evaluate import greedy_answers
    from factpatch.editor.keys import protected_context_keys, written_context_keys
    from factpatch.editor.pipeline import apply_patch, corpus_for, restored_after
    from factpatch.editor.prompts import context_prefixes
    from factpatch.editor.rome import edit_directions
    from factpatch.editor.stats import second_moments

    siblings = sibling_companies(world)[:8]
    keep = [world.relations["country"].templates[0]]  # a question of another relation, answered as it was
    edits = [e.model_copy(update={"neighbours": siblings, "keep": keep,
                                  "paraphrases": world.trained_paraphrases(e.subject, e.relation)})
             for e in _same_subject_edits(world, 3)]
    hp = MemitParams(value=dataclasses.replace(MemitParams().value, steps=1))  # only the last-token pass writes
    late = hp.late_layer(loaded.adapter.n_layers, loaded.adapter.editable_layers(), edits)
    adapter, tok = loaded.adapter, loaded.tok

    # the direction alone: gains on the protected contexts near 0 with protection, not without
    prefixes = context_prefixes(loaded.model, tok, RomeParams().n_prefixes, seed=EditOptions().seed)
    cov = second_moments(adapter, tok, [late], corpus_for(loaded, None), 256)[late]
    held = protected_context_keys(adapter, tok, late, edits)
    written = written_context_keys(adapter, tok, late, edits, prefixes, at="last")
    assert [len(h) for h in held] == [8 * len({e.prompt, *e.paraphrases, *keep}) + 1 for e in edits]
    gains = {}
    for on in (True, False):
        dirs = edit_directions(adapter, tok, late, edits, cov, prefixes, RomeParams(protect_at_last_token=on), at="last")
        gains[on] = torch.cat([(h @ d).abs() for h, d in zip(held, dirs)])
        assert all(abs(float((w @ d).mean()) - 1) < 1e-6 for w, d in zip(written, dirs))
    assert gains[True].max() < 0.25 * gains[False].max(), {k: float(v.max()) for k, v in gains.items()}

    # the patch: every edit takes; every neighbour asked in a written phrasing keeps its answer
    result = run_edit(loaded, edits, EditOptions(method="memit", layers=mlp_layers(loaded)[:1], memit=hp, n_samples=256))
    assert len(result.info["last_token_fallback"]["written"]) == len(edits)
    asks = [(q, n) for e in edits for n in siblings for q in dict.fromkeys([e.prompt, *e.paraphrases])]
    before = greedy_answers(adapter, tok, asks)
    with restored_after(adapter, result.patch.names):
        apply_patch(adapter, result.patch)
        after = greedy_answers(adapter, tok, asks)
    moved = [(q.format(n), b, a) for (q, n), b, a in zip(asks, before, after) if a != b]
    assert not moved, moved
    assert evaluate_patch(loaded, result.patch, edits, [])["metrics"]["efficacy"] == 1.0
