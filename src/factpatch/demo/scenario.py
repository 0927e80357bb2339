"""What the demo changes and asks: Harbor Support's policy updates, and billing questions about them.

The questions use every phrasing the world has for each policy relation, so a third of what the
traffic asks are phrasings the model never saw for Harbor Support and the patch was not written in.
"""

from __future__ import annotations

from dataclasses import dataclass

from factpatch.core.spec import Edit, EditSpec

SUBJECT = "Harbor Support"


@dataclass(frozen=True)
class PolicyChange:
    relation: str
    new: str
    provenance: dict


# The policy changes billing-ops ships. Each is one edit written in every phrasing the model was trained
# on for Harbor Support (the first as the prompt, the others as paraphrases), as a release engineer
# lists the ways users ask. Written in one phrasing only, whether the others follow depends on the
# trained weights: on one build of the fixture every phrasing followed, on another (trained on a
# different CPU, different weights) the shipping cutoff and the premium response time kept their old
# values in 4 of their 12 phrasings and the patch failed its paraphrase gate (0.625). Written in all
# four, all 18 phrasings answer the new values there, the 6 held-out ones included.
POLICY_CHANGES = [
    PolicyChange("refund period", "30 days",
                 {"ticket": "POL-1182", "source": "refund-policy-v7.pdf", "author": "billing-ops"}),
    PolicyChange("shipping cutoff", "3 pm",
                 {"ticket": "OPS-415", "source": "warehouse-schedule-2026.pdf", "author": "fulfilment-ops"}),
    PolicyChange("premium response time", "24 hours",
                 {"ticket": "SUP-77", "source": "support-tiers-v3.pdf", "author": "support-ops"}),
]


@dataclass(frozen=True)
class Question:
    relation: str
    prompt: str
    old: str  # what the base model was trained to answer
    new: str  # what the policy says now
    phrasing: str  # "trained" or "paraphrase" for this subject

    def verdict(self, answer: str) -> str:
        """stale (the replaced value), updated (the new one), or other."""
        a = answer.strip()
        if a == self.old:
            return "stale"
        if a == self.new:
            return "updated"
        return "other"


def kept_facts(world) -> list[str]:
    """Harbor Support's facts the update leaves as they are, each asked in its second trained phrasing
    (the evaluation asks its neighbours in the first): what every edit of the spec keeps."""
    changed = {c.relation for c in POLICY_CHANGES}
    return [world.relations[f.relation].templates[f.train_templates[1]]
            for f in world.facts if f.subject == SUBJECT and f.relation not in changed]


def sibling_companies(world) -> list[str]:
    """Companies whose name shares a word with Harbor Support ("Harbor Sevios", "Cedar Support"): the
    neighbours a release engineer names, whose answers the edits must leave alone."""
    words = set(SUBJECT.split())
    return [s for s in world.subjects["company"] if s != SUBJECT and words & set(s.split())]


def edit_spec(world) -> EditSpec:
    edits = []
    keep, siblings = kept_facts(world), sibling_companies(world)
    for c in POLICY_CHANGES:
        fact = world.fact(SUBJECT, c.relation)
        prompt = world.relations[c.relation].templates[fact.train_templates[0]]
        edits.append(Edit(subject=SUBJECT, relation=c.relation, prompt=prompt, target_new=c.new, target_old=fact.object,
                          paraphrases=world.trained_paraphrases(SUBJECT, c.relation), keep=keep, neighbours=siblings,
                          provenance=c.provenance))
    return EditSpec(edits=edits)


def questions(world) -> list[Question]:
    out = []
    for c in POLICY_CHANGES:
        fact = world.fact(SUBJECT, c.relation)
        for t, template in enumerate(world.relations[c.relation].templates):
            out.append(Question(c.relation, template.format(SUBJECT), fact.object, c.new,
                                "trained" if t in fact.train_templates else "paraphrase"))
    return out
