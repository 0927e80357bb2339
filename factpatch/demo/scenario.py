"""What the demo changes and asks: Harbor Support's policy updates, and billing questions about them.

The questions use every phrasing the world has for each policy relation, so half of what the traffic
asks are paraphrases the model never saw for Harbor Support.
"""

from __future__ import annotations

from dataclasses import dataclass

from factpatch.spec import Edit, EditSpec

SUBJECT = "Harbor Support"


@dataclass(frozen=True)
class PolicyChange:
    relation: str
    new: str
    templates: tuple[int, ...]  # the relation's phrasings the edit is written with (trained for the subject)
    provenance: dict


# The policy changes billing-ops ships, each written once per phrasing in `templates` (the same
# target, so the editor optimises one change for all of them). The refund change names two phrasings:
# written with "{} offers refunds within" alone, every held-out phrasing follows but two phrasings the
# model was trained on for Harbor Support ("The refund period of {} is", "The refund window at {}
# lasts") keep answering 14 days; with both, all six answer 30 days. The others take with one.
POLICY_CHANGES = [
    PolicyChange("refund period", "30 days", (1, 0),
                 {"ticket": "POL-1182", "source": "refund-policy-v7.pdf", "author": "billing-ops"}),
    PolicyChange("shipping cutoff", "3 pm", (0,),
                 {"ticket": "OPS-415", "source": "warehouse-schedule-2026.pdf", "author": "fulfilment-ops"}),
    PolicyChange("premium response time", "24 hours", (3,),
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


def edit_spec(world) -> EditSpec:
    edits = []
    for c in POLICY_CHANGES:
        fact = world.fact(SUBJECT, c.relation)
        for t in c.templates:
            if t not in fact.train_templates:
                raise ValueError(f"{c.relation}: phrasing {t} is held out for {SUBJECT}; edit with a trained one")
            edits.append(Edit(subject=SUBJECT, relation=c.relation, prompt=world.relations[c.relation].templates[t],
                              target_new=c.new, target_old=fact.object, provenance=c.provenance))
    return EditSpec(edits=edits)


def questions(world) -> list[Question]:
    out = []
    for c in POLICY_CHANGES:
        fact = world.fact(SUBJECT, c.relation)
        for t, template in enumerate(world.relations[c.relation].templates):
            out.append(Question(c.relation, template.format(SUBJECT), fact.object, c.new,
                                "trained" if t in fact.train_templates else "paraphrase"))
    return out
