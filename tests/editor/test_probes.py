"""Where the evaluation's neighbours come from: world.json for the fixture, the edits' keep prompts for a
model without one (where specificity would otherwise go unmeasured and its gate unchecked)."""

from __future__ import annotations

import contextlib

import torch

from factpatch.editor.evaluate import Gates, apply_gates, build_probes, measure, measure_baseline
from factpatch.editor.scoring import greedy_answers

from .conftest import fixture_edits, rome_layer


def test_without_a_world_the_keep_prompts_are_the_neighbours(loaded, world):
    adapter, tok = loaded.adapter, loaded.tok
    edits = [e for e in fixture_edits(world, 10, seed=31, keep=True) if e.keep][:3]
    assert len(edits) == 3

    probes = build_probes(adapter, tok, edits, world=None)

    neighbours = probes.of("neighbour")
    assert probes.neighbour_source == "keep prompts"
    assert [(p.edit, p.template) for p in neighbours] == [(i, k) for i, e in enumerate(edits) for k in e.keep]
    # Each is expected to keep what the base model answers now.
    assert [p.target for p in neighbours] == greedy_answers(adapter, tok, [(p.template, p.subject) for p in neighbours])

    base = measure_baseline(adapter, tok, probes, edits, heldout=None)
    untouched = measure(adapter, tok, base, edits, locality=False)
    assert untouched["neighbour_source"] == "keep prompts"
    assert untouched["neighbours"] == len(neighbours)
    assert untouched["neighbours_unchanged"] == 1.0 and untouched["specificity_drop"] == 0.0

    # Removing the MLP output of the layer where this build's causal trace found its facts moves them,
    # and the specificity gate sees it.
    with _peak_mlp_removed(loaded):
        broken = measure(adapter, tok, base, edits, locality=False)
    assert broken["neighbours_unchanged"] < 1.0
    passed, rows = apply_gates(broken, Gates(min_efficacy=0.0, min_generalization=0.0))
    assert not passed
    assert {r["gate"]: r["passed"] for r in rows}["specificity_drop"] is False


def test_with_a_world_the_neighbours_are_unseen_facts_not_the_keep_prompts(loaded, world):
    adapter, tok = loaded.adapter, loaded.tok
    # one edit per subject of the world, each holding its subject's other facts: whatever the world's draw
    edits = [e for e in fixture_edits(world, len(world.facts), seed=31, keep=True) if e.keep]
    assert edits, "no subject of this world has a second fact to hold"

    probes = build_probes(adapter, tok, edits, world=world)

    assert probes.neighbour_source == "world"
    # What an edit holds is a (phrasing, subject) pair: the same phrasing asked of another subject is not held.
    kept = {(k, e.subject) for e in edits for k in e.keep}
    neighbours = probes.of("neighbour")
    assert not any((p.template, p.subject) in kept for p in neighbours)  # held prompts are not what is measured
    # ... and every fact held is still measured, in another of its phrasings
    relation_of = {t: r.name for r in world.relations.values() for t in r.templates}
    measured = {(relation_of[p.template], p.subject) for p in neighbours}
    assert {(relation_of[k], s) for k, s in kept} <= measured


def test_the_edits_that_do_not_take_are_named_with_what_the_model_says(loaded, world):
    """On the unedited model no edit has taken: each is listed, and the model still says the old value."""
    adapter, tok = loaded.adapter, loaded.tok
    edits = fixture_edits(world, 3, seed=21)
    base = measure_baseline(adapter, tok, build_probes(adapter, tok, edits, world), edits, heldout=None)
    m = measure(adapter, tok, base, edits, locality=False)
    assert m["efficacy"] == 0.0
    missed = m["edits_not_taken"]
    assert [x["edit"] for x in missed] == [0, 1, 2]
    for x, e in zip(missed, edits):
        assert (x["subject"], x["relation"], x["target_new"]) == (e.subject, e.relation, e.target_new)
        assert x["answer"] == e.target_old  # the fixture's base knows its facts
        assert x["logprob_old"] > x["logprob_new"]
    # Only the edits that did not take: measured on edit 1 alone, one entry, still numbered 1.
    assert [x["edit"] for x in measure(adapter, tok, base, edits, only={1}, locality=False)["edits_not_taken"]] == [1]


def test_a_subjects_other_facts_are_neighbours_once_for_the_batch(loaded, world):
    facts = [f for f in world.facts if f.subject == "Harbor Support"]
    from factpatch.core.spec import Edit

    edits = [Edit(subject=f.subject, relation=f.relation, prompt=world.relations[f.relation].templates[f.train_templates[0]],
                  target_new=next(c for c in world.relations[f.relation].candidates if c != f.object)) for f in facts[:2]]
    probes = build_probes(loaded.adapter, loaded.tok, edits, world)
    mine = [(p.template, p.subject) for p in probes.of("neighbour") if p.subject == "Harbor Support"]
    assert len(facts) > 2 and len(mine) == len(set(mine)) == len(facts) - 2  # each unchanged fact once, not once per edit


def test_the_regression_set_is_other_facts_and_moves_the_gate(loaded, world):
    edits = fixture_edits(world, 2, seed=5)
    probes = build_probes(loaded.adapter, loaded.tok, edits, world, n_regression=50)
    reg = probes.of("regression")
    edited = {(e.subject, e.relation) for e in edits}
    assert len(reg) == 50 and all(p.edit == -1 for p in reg)
    assert not {(p.subject, _relation_of(world, p)) for p in reg} & edited
    base = measure_baseline(loaded.adapter, loaded.tok, probes, edits, None)
    m = measure(loaded.adapter, loaded.tok, base, edits, locality=False)  # the base against itself
    assert m["regression_facts"] == 50 and m["regression_unchanged"] == 1.0
    assert "regression_unchanged" not in measure(loaded.adapter, loaded.tok, base, edits, only={0}, locality=False)
    passed, rows = apply_gates({**m, "regression_unchanged": 0.9}, Gates())
    (gate,) = [r for r in rows if r["gate"] == "regression_unchanged"]
    assert gate["passed"] is False and not passed


@contextlib.contextmanager
def _peak_mlp_removed(loaded):
    """The MLP output of the layer where this build's causal trace found its facts, zeroed for the block."""
    w = loaded.adapter.mlp_out(rome_layer(loaded)).weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.zero_()
        yield
    finally:
        with torch.no_grad():
            w.copy_(saved)


def _relation_of(world, probe) -> str:
    """The relation a regression probe asks (its template names it)."""
    return next(r.name for r in world.relations.values() if probe.template in r.templates)


def test_the_subjects_holding_an_edits_old_or_new_value_are_probed_apart(loaded, world):
    """Value neighbours: other subjects of the edit's relation that answer its old or its new value, up to
    five of each an edit, measured by value. Drawn apart from the sampled neighbours, which stay exactly
    as they were."""
    adapter, tok = loaded.adapter, loaded.tok
    edits = fixture_edits(world, 6, seed=5)
    probes = build_probes(adapter, tok, edits, world)
    facts = {(f.subject, f.relation): f for f in world.facts}
    edited = {(e.subject, e.relation) for e in edits}
    held = probes.of("value_neighbour")
    assert held
    for i, e in enumerate(edits):
        mine = [p for p in held if p.edit == i]
        for value in (e.target_old, e.target_new):
            holders = [f for f in world.facts if f.relation == e.relation and f.object == value and (f.subject, f.relation) not in edited]
            got = [p for p in mine if p.target == value]
            assert len(got) <= min(5, len(holders))
            assert len(got) == min(5, len(holders)) or any(q.target == value for q in held if q.edit < i)  # drawn once a batch
        for p in mine:
            f = facts[(p.subject, e.relation)]
            assert f.object == p.target in (e.target_old, e.target_new) and (p.subject, e.relation) not in edited
            assert p.template == world.relations[e.relation].templates[f.train_templates[0]]
    assert len({(p.subject, p.template) for p in held}) == len(held)
    without = build_probes(adapter, tok, edits, world, n_value_neighbours=0)
    assert not without.of("value_neighbour")
    assert [(p.edit, p.template, p.subject) for p in without.of("neighbour")] == [(p.edit, p.template, p.subject) for p in probes.of("neighbour")]

    base = measure_baseline(adapter, tok, probes, edits, heldout=None)
    same = measure(adapter, tok, base, edits, locality=False)
    olds = sum(p.target == edits[p.edit].target_old for p in held)
    assert (same["old_value_neighbours"], same["new_value_neighbours"]) == (olds, len(held) - olds)
    assert same["old_value_neighbours_unchanged"] == same["new_value_neighbours_unchanged"] == 1.0
    with _peak_mlp_removed(loaded):
        broken = measure(adapter, tok, base, edits, locality=False)
    assert min(broken["old_value_neighbours_unchanged"], broken["new_value_neighbours_unchanged"]) < 1.0
