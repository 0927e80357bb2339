"""Quality on the fixture, with floors a little below the targets (the note gives measured numbers).

ROME: 50 random single edits, each from the base. MEMIT: one batch of 100, plain (as published) and
through its own update (`--joint`), which is the MEMIT the targets are met by. The 1,000-edit batch is
measured by bench/editor_bench.py, not here.
"""

from __future__ import annotations

import torch

from factpatch import patchfile
from factpatch.editor.memit import MemitParams
from factpatch.editor.pipeline import EditOptions, evaluate_each, evaluate_patch, heldout_texts, load, run_edit, run_single_edits
from factpatch.editor.weights import apply_patch

from factpatch.fixture.edit_samples import random_edits, with_keep_and_paraphrases

from .conftest import fixture_edits


def test_rome_single_edits_from_the_base(loaded, world):
    # Each edit keeps its subject's other facts (in another phrasing than the one evaluated) and is written
    # in its relation's other trained phrasings; paraphrases are evaluated on the held-out phrasings.
    edits = [e.model_copy(update={"paraphrases": world.trained_paraphrases(e.subject, e.relation)})
             for e in fixture_edits(world, 50, seed=11, keep=True)]
    patches = [r.patch for r in run_single_edits(loaded, edits, EditOptions(method="rome"))]
    # No held-out text: ROME's targets say nothing of perplexity, and 50 passes over it cost 25 s.
    # The evaluation gets the edits without their paraphrases, so nothing written is measured.
    m = evaluate_each(loaded, patches, [e.model_copy(update={"paraphrases": []}) for e in edits], [])["metrics"]
    # Floors below what the editor reaches (training is deterministic on one CPU, not across CPUs;
    # targets 0.99 / 0.90 / 0.98): weights eb102e9b 1.00 / 0.98 / 0.986, Pune → Sterios and Lada →
    # Sterios (maker) written by the last-token fallback; 0.98 / 0.96 / 0.986 without it, where Pune took
    # at no layer with no setting tried (bench/results/editor_tuning.md).
    assert m["efficacy"] >= 0.96, m
    assert m["generalization"] >= 0.90, m
    assert m["neighbours_unchanged"] >= 0.97, m


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


def test_memit_batch_of_100_and_exact_reproduction(loaded, world, fixture_dir, tmp_path):
    edits = fixture_edits(world, 100, seed=12)
    result = run_edit(loaded, edits, EditOptions(method="memit"))
    m = evaluate_patch(loaded, result.patch, edits, heldout_texts(loaded, None))["metrics"]
    # Floors below today's numbers. Plain MEMIT does not meet the neighbour target (0.95; `--joint`, below,
    # does): its update moves the edited subjects' other facts and, through the keys at layers 0-1 that
    # read it, other subjects' (bench/results/editor_tuning.md). Measured on weights eb102e9b:
    # 0.99 / 0.855 / 0.871, the 8 edits the batch left written by the last-token fallback (without it
    # 0.92 / 0.805 / 0.870; weights cf097a51 without it 0.91 / 0.82 / 0.847).
    assert m["efficacy"] >= 0.94, m
    assert m["generalization"] >= 0.78, m
    assert m["neighbours_unchanged"] >= 0.80, m
    assert m["ppl_drift"] < 0.01, m  # -0.02 % (0.013 % on cf097a51)

    # The patch file applied to a fresh copy of the base is bit for bit the model evaluated above.
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
        apply_patch(loaded.adapter, result.patch)  # what evaluate_patch measured
        for name, t in evaluated.items():
            assert torch.equal(t, state[name]), name
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                evaluated[n].copy_(w)


def test_memit_joint_batch_of_100_meets_the_targets(loaded, world):
    """The spec an engineer writes for a batch: each edit holds its subject's other facts (second trained
    and held-out phrasings) and is written in its relation's other trained phrasings. The evaluation asks
    neighbours in the first trained phrasing and paraphrases in held-out ones: nothing held is measured."""
    evaluated = random_edits(world, 100, seed=4)
    spec = with_keep_and_paraphrases(world, evaluated, keep_heldout=True)
    result = run_edit(loaded, spec, EditOptions(method="memit", memit=MemitParams.joint()))
    # one layer at ROME's depth, and the fallback's layer 4 for the edits the batch left, if any
    fallback = result.info["last_token_fallback"]
    assert result.layers == result.patch.manifest["layers"] == [0, *([4] if fallback["written"] else [])]
    assert len(fallback["written"]) <= 10  # at most a tenth of the batch
    hparams = result.patch.manifest["hparams"]
    assert hparams["through_update"] is True and hparams["paraphrase_keys"] is True
    m = evaluate_patch(loaded, result.patch, evaluated, heldout_texts(loaded, None))["metrics"]
    # Targets 0.98 / 0.85 / 0.95, drift < 1 %. Weights eb102e9b: 1.00 / 0.895 / 0.966, drift 0.02 %,
    # 4 edits written by the fallback; seeds 5 and 6 (bench/results/editor_tuning.md): 1.00 / 0.88 / 0.965
    # and 1.00 / 0.92 / 0.968.
    assert m["efficacy"] >= 0.97, m
    assert m["generalization"] >= 0.84, m
    assert m["neighbours_unchanged"] >= 0.94, m
    assert m["ppl_drift"] < 0.01, m


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
    from factpatch.editor.memit import _anchors
    from factpatch.spec import Edit

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
