"""Edit quality on the fixture: each test asserts the target its name states, on whatever build the
machine made (bench/results/fixture_builds.json has the figures of other builds).

Targets, evaluated on held-out phrasings the patch was not written in: ROME single edits 0.99 efficacy /
0.90 paraphrase / 0.98 neighbours unchanged; plain MEMIT, one batch of 100 distinct-subject edits in one
phrasing each, 0.98 / 0.85 / 0.95 with perplexity drift < 0.5 %; a same-subject batch (20 subjects × all
their relations, one phrasing each) 0.95 / 0.85 / 0.95. The layers are the editor's defaults for the
fixture: where its causal trace found recall (train_report.json).
"""

from __future__ import annotations

import random

import pytest
import torch

from factpatch.core import patchfile
from factpatch.core.spec import Edit
from factpatch.editor.pipeline import (
    EditOptions,
    evaluate_each,
    evaluate_patch,
    heldout_texts,
    load,
    run_edit,
    run_single_edits,
)
from factpatch.editor.rome import fallback_layer
from factpatch.editor.weights import apply_patch

from .conftest import fixture_edits, memit_layers, rome_layer

pytestmark = pytest.mark.quality


def _figures(m: dict) -> str:
    """The figures a target is judged on, in one line (a failure shows them all, not a cut-off dict)."""
    keys = ("efficacy", "efficacy_prob", "generalization", "neighbours_unchanged", "ppl_drift")
    return ", ".join(f"{k} {m[k]:.4g}" for k in keys if m.get(k) is not None) + f" over {m.get('edits')} edits"


def _assert_targets(m: dict, efficacy: float, paraphrase: float, neighbours: float) -> None:
    assert m["efficacy"] >= efficacy, _figures(m)
    assert m["generalization"] >= paraphrase, _figures(m)
    assert m["neighbours_unchanged"] >= neighbours, _figures(m)


@pytest.mark.xfail(strict=False, reason=(
    "ROME's targets (0.99 / 0.90 / 0.98 over 50 edits) hold on three builds of the fixture and not on a fourth: with "
    "the fixture's ROME settings (the last-token fallback, an edit whose bare prompt misses retried, keep prompts "
    "weighed 1.0, the prompt's rows counted as 4 paraphrases) the default recipe's seed build (18e178ee) gives "
    "1.00 / 0.96 / 0.990, seed 1's (b937934a) 1.00 / 0.92 / 0.986, seed 2's (7c79a807) 1.00 / 0.91 / 0.980; on "
    "seed 3's (bb5dab35) the held-out phrasings stay under theirs (1.00 / 0.81 / 0.9955). The value's weight decay "
    "holds seed 3 short, and no decay serves all four: 0.02 gives seed 3 1.00 / 0.91 / 0.9846 and seed 2's "
    "neighbours 0.9707. Non-strict because the builds that meet the target must stay green; figures in the README "
    "and bench/results/editor_tuning.md."))
def test_rome_single_edits_meet_the_targets(loaded, world):
    # Each edit keeps its subject's other facts (in another phrasing than the one evaluated) and is written
    # in its relation's other trained phrasings; paraphrases are evaluated on the held-out phrasings.
    edits = [e.model_copy(update={"paraphrases": world.trained_paraphrases(e.subject, e.relation)})
             for e in fixture_edits(world, 50, seed=11, keep=True)]
    results = run_single_edits(loaded, edits, EditOptions(method="rome"))
    for r in results:  # at the ROME layer, or where the manifest says the last-token fallback wrote it
        (written,) = [e["written"] for e in r.patch.manifest["edits"]]
        late = fallback_layer(True, None, loaded.adapter.n_layers, loaded.adapter.editable_layers())
        at = {"subject": [rome_layer(loaded)], "last": [late]}[written["key_at"]]
        assert r.layers == written["layers"] == at
    # No held-out text: ROME's targets say nothing of perplexity, and 50 passes over it cost 25 s.
    # The evaluation gets the edits without their paraphrases, so nothing written is measured.
    m = evaluate_each(loaded, [r.patch for r in results], [e.model_copy(update={"paraphrases": []}) for e in edits], [])["metrics"]
    _assert_targets(m, 0.99, 0.90, 0.98)


def test_single_edits_in_one_batch_are_the_edits_made_one_at_a_time(loaded, world):
    edits = fixture_edits(world, 3, seed=14, keep=True)
    batched = run_single_edits(loaded, edits, EditOptions(method="rome"))
    for e, r in zip(edits, batched):
        alone = run_edit(loaded, [e], EditOptions(method="rome")).patch
        assert r.patch.manifest["edits"] == alone.manifest["edits"]
        assert r.patch.manifest["base"] == alone.manifest["base"]
        (name,) = alone.names
        (u1, v1), (u2, v2) = alone.factors[name], r.patch.factors[name]
        assert torch.allclose(v1, v2, atol=1e-5)  # the same input direction
        assert torch.nn.functional.cosine_similarity(u1[:, 0], u2[:, 0], dim=0) > 0.99, (u1.norm(), u2.norm())


@pytest.mark.xfail(strict=True, reason=(
    "known limit of plain MEMIT on this fixture: one batch of 100 subjects at layer 2 (the build's recall peak) "
    "takes 0.55 greedy (0.68 by probability), paraphrases 0.395, neighbours 0.898, drift 0.09 %, against the "
    "targets 0.98 / 0.85 / 0.95 on build 18e178ee (`--joint`: 0.95 / 0.405 / 0.965: it takes the edits but reaches no "
    "more of the phrasings they were not written in). The values carry the edits (added at the subject on the base "
    "model: 0.94 of the prompts, 0.83 of the held-out phrasings); the update delivers part of them because 100 keys "
    "crowd one 1,024-wide key space (about what 10,000 edits are to GPT-J), and writing more of each δ costs "
    "neighbours one for one (bench/results/editor_tuning.md, 'a crowded key space'). A user's batch of 100 edits "
    "should expect such losses; `factpatch eval` measures them before the patch may ship. Strict: the day it "
    "passes, this mark must go."))
def test_plain_memit_batch_of_100_meets_the_targets(loaded, world):
    edits = fixture_edits(world, 100, seed=12)  # distinct subjects, one phrasing each
    result = run_edit(loaded, edits, EditOptions(method="memit"))
    m = evaluate_patch(loaded, result.patch, edits, heldout_texts(loaded, None))["metrics"]
    _assert_targets(m, 0.98, 0.85, 0.95)
    assert abs(m["ppl_drift"]) < 0.005, _figures(m)


def test_memit_patch_is_written_as_recorded_and_reproduces_exactly(loaded, world, fixture_dir, tmp_path):
    edits = fixture_edits(world, 20, seed=12)
    result = run_edit(loaded, edits, EditOptions(method="memit"))
    assert result.layers == memit_layers(loaded)
    assert all(e["written"] == {"method": "memit", "layers": result.layers, "key_at": "subject"}
               for e in result.patch.manifest["edits"])
    # The patch file applied to a fresh copy of the base is bit for bit the model the editor left.
    path = tmp_path / "batch.fpatch"
    digest = patchfile.write(result.patch, path)
    assert digest == patchfile.sha256_file(path)
    from_file, _ = patchfile.read(path)
    fresh = load(fixture_dir)
    state = fresh.model.state_dict()
    patchfile.apply_to_state_dict(state, from_file, conv1d_names=fresh.adapter.conv1d_names())
    evaluated = loaded.model.state_dict()
    saved = {n: evaluated[n].clone() for n in result.patch.names}
    try:
        apply_patch(loaded.adapter, result.patch)  # what evaluate_patch measures
        for name, t in evaluated.items():
            assert torch.equal(t, state[name]), name
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                evaluated[n].copy_(w)


def same_subject_edits(world, n_subjects: int, seed: int) -> list[Edit]:
    """Every fact of n subjects that have several (companies and people), each moved to another candidate,
    asked in its first trained phrasing: several edits share each subject's key."""
    rng = random.Random(seed)
    subjects = rng.sample([s for kind in ("company", "person") for s in world.subjects[kind]], n_subjects)
    out = []
    for f in world.facts:
        if f.subject in subjects:
            rel = world.relations[f.relation]
            out.append(Edit(subject=f.subject, relation=f.relation, prompt=rel.templates[f.train_templates[0]],
                            target_new=rng.choice([c for c in rel.candidates if c != f.object]), target_old=f.object))
    return out


@pytest.mark.xfail(strict=True, reason=(
    "known limit of MEMIT for several edits of one subject: its edits share one optimised value, which does not "
    "carry all of the new answers. Measured on 52 edits of 20 subjects, build 18e178ee, against the targets "
    "0.95 / 0.85 / 0.95: 0.635 / 0.50 / 0.979 with the shared value alone; 0.885 (0.96 by probability) / 0.558 / "
    "0.958 with the 22 edits it leaves written again at the prompt's last token, held off the subject's other "
    "questions (each edit there is written in one phrasing, so the held-out ones rarely follow). On the demo's three Harbor Support edits "
    "a value freed of every regulariser misses two of three on seed 1 (bench/results/editor_tuning.md). A user's batch that "
    "changes many facts of one subject may miss some of them; `factpatch eval` names each edit that did not "
    "take. Strict: the day it passes, this mark must go."))
def test_same_subject_batch_meets_the_targets(loaded, world):
    """20 subjects × all their relations in one MEMIT batch: the edits of one subject are optimised as one
    value (one key carries all its new answers), so they do not average each other away."""
    edits = same_subject_edits(world, 20, seed=7)
    assert len(edits) > 20 and len({e.subject for e in edits}) == 20
    result = run_edit(loaded, edits, EditOptions(method="memit"))
    assert result.info["subjects"] == 20
    m = evaluate_patch(loaded, result.patch, edits, heldout_texts(loaded, None))["metrics"]
    _assert_targets(m, 0.95, 0.85, 0.95)


def test_follow_up_batch_carries_its_parent(loaded, world, tmp_path):
    edits = fixture_edits(world, 12, seed=13)
    first, second = edits[:6], edits[6:]
    p1 = run_edit(loaded, first, EditOptions(method="memit")).patch
    d1 = patchfile.write(p1, tmp_path / "v1.fpatch")
    p2 = run_edit(loaded, second, EditOptions(method="memit", parent=str(tmp_path / "v1.fpatch"))).patch
    assert p2.manifest["parent"] == d1
    assert p2.manifest["base"]["fingerprint"] == p1.manifest["base"]["fingerprint"]
    assert [e["subject"] for e in p2.manifest["edits"]] == [e.subject for e in edits]
    for name in p1.names:
        r1 = p1.rank(name)
        assert p2.rank(name) > r1  # the follow-up's own rows come after its parent's
        assert torch.equal(p2.factors[name][0][:, :r1], p1.factors[name][0])
        assert torch.equal(p2.factors[name][1][:, :r1], p1.factors[name][1])
    # Complete against the base: both batches hold when only v2 is applied.
    m = evaluate_patch(loaded, p2, edits, heldout_texts(loaded, None))["metrics"]
    assert m["efficacy"] >= 0.5, m  # today 0.58: below target, like the batch above


def test_memit_anchors_a_subject_in_its_keep_prompts_and_the_batch_s_other_relations(loaded):
    """Each subject is held to its answers for its keep prompts and the batch's relations it is not edited in."""
    from factpatch.core.spec import Edit
    from factpatch.editor.memit import _anchors

    person = loaded.world.subjects["person"][0]
    edits = [Edit(subject="Harbor Support", relation="refund period", prompt="{} offers refunds within", target_new="30 days"),
             Edit(subject="Harbor Support", relation="shipping cutoff", prompt="{} stops same-day shipping at", target_new="3 pm"),
             Edit(subject=person, relation="instrument", prompt="{} plays the", target_new="harp"),
             Edit(subject="Ben Y", relation="premium response time", prompt="{} answers premium tickets within", target_new="6 hours")]
    tok = loaded.tok
    texts = lambda rows: [tok.decode(r.ids, skip_special_tokens=True) for r in rows]
    assert texts(_anchors(tok, edits, "Harbor Support", 8)) == [
        "Harbor Support plays the", "Harbor Support answers premium tickets within"]
    assert len(_anchors(tok, edits, person, 8)) == 3
    assert len(_anchors(tok, edits, person, 1)) == 1
    assert _anchors(tok, edits, person, 0) == []
    # a subject the tokenizer cannot spell gets no anchors rather than an error
    assert _anchors(tok, edits, "Qqzx Vvq", 8) == []
    # keep prompts come first and stay with the batch's relations turned off; a keep prompt another
    # edit of the subject changes is not held
    country = loaded.world.relations["country"].templates[0]
    kept = [edits[0].model_copy(update={"keep": [country, "{} works for"]}), *edits[1:]]
    want = [country.replace("{}", "Harbor Support"), "Harbor Support works for"]
    assert texts(_anchors(tok, kept, "Harbor Support", 0)) == want
    assert texts(_anchors(tok, kept, "Harbor Support", 8))[:2] == want
    clash = [edits[0].model_copy(update={"keep": ["{} stops same-day shipping at"]}), *edits[1:]]
    assert texts(_anchors(tok, clash, "Harbor Support", 0)) == []
