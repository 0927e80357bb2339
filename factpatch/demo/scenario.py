"""What the demo changes and asks: Harbor Support's policy updates, and billing questions about them.

The questions use every phrasing the world has for each policy relation, so half of what the traffic
asks are paraphrases the model never saw for Harbor Support.
"""

from __future__ import annotations

from dataclasses import dataclass

from factpatch.spec import Edit, EditSpec

SUBJECT = "Harbor Support"

# (relation, new value, provenance): the policy changes billing-ops ships.
POLICY_CHANGES = [
    ("refund period", "30 days", {"ticket": "POL-1182", "source": "refund-policy-v7.pdf", "author": "billing-ops"}),
    ("shipping cutoff", "2 pm", {"ticket": "OPS-311", "source": "fulfilment-sla-2026.pdf", "author": "logistics"}),
    ("premium response time", "4 hours", {"ticket": "SUP-77", "source": "support-tiers-v3.pdf", "author": "support-ops"}),
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


def edit_spec(world) -> EditSpec:
    edits = []
    for relation, new, provenance in POLICY_CHANGES:
        fact = world.fact(SUBJECT, relation)
        template = world.relations[relation].templates[fact.train_templates[0]]
        edits.append(Edit(subject=SUBJECT, relation=relation, prompt=template,
                          target_new=new, target_old=fact.object, provenance=provenance))
    return EditSpec(edits=edits)


def questions(world) -> list[Question]:
    out = []
    for relation, new, _ in POLICY_CHANGES:
        fact = world.fact(SUBJECT, relation)
        for t, template in enumerate(world.relations[relation].templates):
            out.append(Question(relation, template.format(SUBJECT), fact.object, new,
                                "trained" if t in fact.train_templates else "paraphrase"))
    return out
