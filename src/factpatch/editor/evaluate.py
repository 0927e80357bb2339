"""Does an edit work, and what else did it change?

- efficacy: the edit prompt yields the new target (greedy) and P(new) > P(old);
- generalization: paraphrases yield the new target (held-out templates from world.json for the
  fixture, the edit's own `paraphrases` list otherwise);
- specificity: neighbour facts (other subjects of the relation, the subject's other relations) keep
  their answers. For an edit world.json does not know (any model but the fixture), the edit's own
  `keep` prompts are its neighbours, each expected to keep the base model's greedy answer; they are
  also what the editor held steady, so they show what was held, not unseen facts (`neighbour_source`);
- value neighbours: the subjects that hold the edit's old or new value in its relation (up to
  `n_value_neighbours` of each an edit), each expected to keep its answer, reported apart by value (and
  apart from the sampled neighbours, which stay comparable): an edit that spreads moves the old value's
  holders (CounterFact's neighbourhood), one that pushes moves the new value's holders off it;
- regression (optional, `n_regression`): a random sample of the world's other facts, each asked in its
  first trained phrasing; the share whose answer is unchanged. Neighbours are the facts an edit most
  likely disturbs; the regression set is the release's wide check that nothing else moved;
- locality: perplexity drift on held-out text and mean KL of the next-token distribution there.

The base is measured once (`Baseline`); each patched model is compared against it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from .adapters import Adapter
from .scoring import greedy_answers, mean_kl, perplexity, score_targets, text_logprobs, text_token_ids


@dataclass(frozen=True)
class Gates:
    """Defaults follow common practice for knowledge edits; every one can be overridden."""

    min_efficacy: float = 0.90
    min_generalization: float = 0.85
    max_specificity_drop: float = 2.0  # points of neighbour accuracy
    max_ppl_drift: float = 0.005  # relative increase of held-out perplexity
    min_regression_unchanged: float = 0.98  # share of the regression set answering as before (when measured)


@dataclass
class Probe:
    edit: int
    kind: str  # "efficacy" | "paraphrase" | "neighbour" | "value_neighbour" | "regression" (edit -1: no one edit's)
    template: str
    subject: str
    target: str  # for neighbours: the true object, or the base model's answer ("" until it is read)


@dataclass
class Probes:
    items: list[Probe]
    old_targets: list[str]  # per edit
    neighbour_source: str = "world"  # "world", "keep prompts", both ("world+keep prompts") or "none"

    def of(self, kind: str, edits: set[int] | None = None) -> list[Probe]:
        return [p for p in self.items if p.kind == kind and (edits is None or p.edit in edits)]


def build_probes(adapter: Adapter, tok, edits, world=None, n_neighbours: int = 10, seed: int = 0,
                 n_regression: int = 0, n_value_neighbours: int = 5) -> Probes:
    """Probes for every edit; the old target comes from the spec, the world, or the base model. With a
    world and `n_regression`, also that many of its other facts (the regression set)."""
    items: list[Probe] = []
    edited = {(e.subject, e.relation) for e in edits}
    facts = {(f.subject, f.relation): f for f in world.facts} if world else {}
    by_relation: dict[str, list] = {}
    by_subject: dict[str, list] = {}
    for f in facts.values():
        by_relation.setdefault(f.relation, []).append(f)
        by_subject.setdefault(f.subject, []).append(f)
    rng = random.Random(seed)
    asked: set[tuple[str, str]] = set()  # neighbour facts already probed
    valued: set[tuple[str, str]] = set()  # value neighbours already probed
    value_rng = random.Random(seed + 2)  # its own draws: the sampled neighbours stay as they were
    kept: list[Probe] = []  # keep prompts of edits the world does not know; answered by the base below
    missing_old = []
    olds: list[str | None] = []
    for i, e in enumerate(edits):
        items.append(Probe(i, "efficacy", e.prompt, e.subject, e.target_new))
        fact = facts.get((e.subject, e.relation))
        rel = world.relations.get(e.relation) if world else None
        paraphrases = list(e.paraphrases)
        if fact is not None and rel is not None:
            paraphrases += [t for t in world.heldout_paraphrases(e.subject, e.relation) if t != e.prompt]
        for t in dict.fromkeys(paraphrases):
            items.append(Probe(i, "paraphrase", t, e.subject, e.target_new))
        old = e.target_old or (fact.object if fact is not None else None)
        if rel is not None:
            others = [f for f in by_relation.get(e.relation, []) if (f.subject, f.relation) not in edited]
            for f in rng.sample(others, min(n_neighbours, len(others))):
                if (f.subject, f.relation) not in asked:
                    asked.add((f.subject, f.relation))
                    items.append(Probe(i, "neighbour", rel.templates[f.train_templates[0]], f.subject, f.object))
            for value in dict.fromkeys(v for v in (old, e.target_new) if v):
                holders = [f for f in others if f.object == value and (f.subject, f.relation) not in valued]
                for f in value_rng.sample(holders, min(n_value_neighbours, len(holders))):
                    valued.add((f.subject, f.relation))
                    items.append(Probe(i, "value_neighbour", rel.templates[f.train_templates[0]], f.subject, f.object))
        # The subject's other facts: once for the batch, with the first edit of the subject (several edits
        # of one subject would otherwise count each of them once per edit).
        for f in by_subject.get(e.subject, []):
            if (f.subject, f.relation) not in edited and (f.subject, f.relation) not in asked:
                asked.add((f.subject, f.relation))
                t = world.relations[f.relation].templates[f.train_templates[0]]
                items.append(Probe(i, "neighbour", t, f.subject, f.object))
        if fact is None:
            kept.extend(Probe(i, "neighbour", k, e.subject, "") for k in dict.fromkeys(e.keep))
        if old is None:
            missing_old.append(i)
        olds.append(old)
    if missing_old:
        answers = greedy_answers(adapter, tok, [(edits[i].prompt, edits[i].subject) for i in missing_old])
        for i, a in zip(missing_old, answers):
            olds[i] = a
    if world is not None and n_regression:
        others = [f for f in world.facts if (f.subject, f.relation) not in edited]
        for f in random.Random(seed + 1).sample(others, min(n_regression, len(others))):
            items.append(Probe(-1, "regression", world.relations[f.relation].templates[f.train_templates[0]], f.subject, f.object))
    from_world = any(p.kind == "neighbour" for p in items)
    if kept:
        answers = greedy_answers(adapter, tok, [(p.template, p.subject) for p in kept])
        kept = [Probe(p.edit, p.kind, p.template, p.subject, a) for p, a in zip(kept, answers) if a]
        items += kept
    source = "+".join([s for s, have in (("world", from_world), ("keep prompts", bool(kept))) if have]) or "none"
    return Probes(items, [o or "" for o in olds], source)


@dataclass
class Baseline:
    """The unedited model's answers to every probe, and its held-out text distributions."""

    probes: Probes
    answers: list[tuple[int, ...]]
    correct: torch.Tensor
    old_logprob: torch.Tensor
    heldout: list[str] = field(default_factory=list)
    text_logps: list[torch.Tensor] = field(default_factory=list)
    ppl: float | None = None


def _items(probes: list[Probe]):
    return [(p.template, p.subject, p.target) for p in probes]


def measure_baseline(adapter: Adapter, tok, probes: Probes, edits, heldout: list[str] | None) -> Baseline:
    s = score_targets(adapter, tok, _items(probes.items))
    old_items = [(e.prompt, e.subject, o) for e, o in zip(edits, probes.old_targets) if o]
    old_lp = torch.full((len(edits),), -float("inf"), dtype=torch.float64)
    if old_items:
        have = [i for i, o in enumerate(probes.old_targets) if o]
        old_lp[have] = score_targets(adapter, tok, old_items).logprob
    b = Baseline(probes, s.answer, s.greedy, old_lp)
    if heldout:
        b.heldout = heldout
        b.text_logps = text_logprobs(adapter, tok, heldout)
        b.ppl = perplexity(b.text_logps, text_token_ids(tok, heldout))
    return b


def _frac(x: torch.Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


def measure(
    adapter: Adapter, tok, base: Baseline, edits, only: set[int] | None = None, locality: bool = True
) -> dict[str, Any]:
    """Metrics of the model as it is now (patched) against the baseline; `only` limits to some edits."""
    idx = [i for i, p in enumerate(base.probes.items) if only is None or p.edit in only]
    probes = [base.probes.items[i] for i in idx]
    s = score_targets(adapter, tok, _items(probes))
    kinds = [p.kind for p in probes]
    sel = {k: torch.tensor([j for j, kk in enumerate(kinds) if kk == k], dtype=torch.long) for k in ("efficacy", "paraphrase", "neighbour")}

    eff = sel["efficacy"]
    eff_edits = [probes[j].edit for j in eff.tolist()]
    old_lp_after = torch.full((len(eff_edits),), -float("inf"), dtype=torch.float64)
    have = [k for k, e in enumerate(eff_edits) if base.probes.old_targets[e]]
    if have:
        old_lp_after[have] = score_targets(
            adapter, tok, [(edits[eff_edits[k]].prompt, edits[eff_edits[k]].subject, base.probes.old_targets[eff_edits[k]]) for k in have]
        ).logprob
    new_lp = s.logprob[eff]
    eff_greedy = s.greedy[eff]
    eff_prob = new_lp > old_lp_after
    missed = [k for k in range(len(eff_edits)) if not (eff_greedy[k] and eff_prob[k])]
    said = greedy_answers(adapter, tok, [(edits[eff_edits[k]].prompt, edits[eff_edits[k]].subject) for k in missed])
    out: dict[str, Any] = {
        "edits": len(eff_edits),
        "efficacy": _frac(eff_greedy & eff_prob),
        # Which edits do not take and what the model says instead: the number alone does not say what to fix.
        "edits_not_taken": [
            {"edit": i, "subject": edits[i].subject, "relation": edits[i].relation, "target_new": edits[i].target_new,
             "answer": answer, "logprob_new": float(new_lp[k]),
             "logprob_old": float(old_lp_after[k]) if base.probes.old_targets[i] else None}
            for k, i, answer in zip(missed, [eff_edits[k] for k in missed], said)
        ],
        "efficacy_greedy": _frac(eff_greedy),
        "efficacy_prob": _frac(eff_prob),
        "generalization": _frac(s.greedy[sel["paraphrase"]]),
        "paraphrase_prompts": int(sel["paraphrase"].numel()),
    }
    nb = sel["neighbour"]
    if nb.numel():
        before_ans = [base.answers[idx[j]] for j in nb.tolist()]
        after_ans = [s.answer[j] for j in nb.tolist()]
        unchanged = torch.tensor([a == b for a, b in zip(before_ans, after_ans)])
        acc_before = base.correct[torch.tensor([idx[j] for j in nb.tolist()])]
        acc_after = s.greedy[nb]
        out.update(
            neighbours=int(nb.numel()),
            neighbour_source=base.probes.neighbour_source,
            neighbours_unchanged=_frac(unchanged),
            specificity_before=_frac(acc_before),
            specificity_after=_frac(acc_after),
            specificity_drop=100.0 * (_frac(acc_before) - _frac(acc_after)),
        )
    else:
        out.update(neighbours=0, neighbour_source="none", neighbours_unchanged=None, specificity_before=None, specificity_after=None, specificity_drop=None)
    for which in ("old", "new"):  # a value neighbour holds its edit's old value, or else its new one
        held = [j for j, k in enumerate(kinds) if k == "value_neighbour"
                and (probes[j].target == base.probes.old_targets[probes[j].edit]) == (which == "old")]
        same = torch.tensor([base.answers[idx[j]] == s.answer[j] for j in held], dtype=torch.bool)
        out.update({f"{which}_value_neighbours": len(held), f"{which}_value_neighbours_unchanged": _frac(same)})
    reg = [j for j, k in enumerate(kinds) if k == "regression"]
    if reg:
        same = [base.answers[idx[j]] == s.answer[j] for j in reg]
        out.update(regression_facts=len(reg), regression_unchanged=sum(same) / len(same))
    if locality and base.heldout:
        logps = text_logprobs(adapter, tok, base.heldout)
        ppl = perplexity(logps, text_token_ids(tok, base.heldout))
        out.update(
            ppl_before=base.ppl,
            ppl_after=ppl,
            ppl_drift=ppl / base.ppl - 1.0,
            kl_unrelated=mean_kl(base.text_logps, logps),
            heldout_texts=len(base.heldout),
        )
    return out


def apply_gates(metrics: dict[str, Any], gates: Gates) -> tuple[bool, list[dict[str, Any]]]:
    """Each gate: name, value, threshold, passed; a metric that could not be measured is skipped."""
    rows = []

    def gate(name, value, op, threshold):
        if value is None:
            rows.append({"gate": name, "value": None, "threshold": threshold, "op": op, "passed": None})
            return
        ok = value >= threshold if op == ">=" else (value <= threshold if op == "<=" else value < threshold)
        rows.append({"gate": name, "value": value, "threshold": threshold, "op": op, "passed": bool(ok)})

    gate("efficacy", metrics.get("efficacy"), ">=", gates.min_efficacy)
    gate("generalization", metrics.get("generalization"), ">=", gates.min_generalization)
    gate("specificity_drop", metrics.get("specificity_drop"), "<=", gates.max_specificity_drop)
    gate("ppl_drift", metrics.get("ppl_drift"), "<", gates.max_ppl_drift)
    if metrics.get("regression_unchanged") is not None:
        gate("regression_unchanged", metrics["regression_unchanged"], ">=", gates.min_regression_unchanged)
    return all(r["passed"] is not False for r in rows), rows
