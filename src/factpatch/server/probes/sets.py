"""What a probe run asks: the patch's edit prompts, their paraphrases, and the regression set.

Edits and paraphrases come from the patch manifest (a patch is complete against the base, so its
edits include its parents'), plus the extra paraphrases an operator stored with SetProbeSet. A run
takes at most `sample_size` prompts: every edit prompt first (sampled when there are more), then
paraphrases, then regression prompts, so an edit that stops holding is seen on the next run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

EDIT, PARAPHRASE, REGRESSION = "edit", "paraphrase", "regression"


@dataclass(frozen=True)
class Question:
    kind: str
    prompt: str
    expect: str


class ProbeSetError(ValueError):
    def __init__(self, reason: str, message: str, field: str = ""):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message, self.field = reason, message, field


def check_extras(manifest: dict, extras: list[dict]) -> list[dict]:
    """Extra paraphrases must name an edit of this patch and hold `{}` for the subject."""
    edited = {(e.get("subject", ""), e.get("relation", "")) for e in manifest.get("edits", [])}
    out = []
    for i, x in enumerate(extras):
        key = (x.get("subject", ""), x.get("relation", ""))
        if key not in edited:
            raise ProbeSetError("PROBE_SUBJECT_NOT_IN_PATCH",
                                f"edits[{i}]: ({key[0]!r}, {key[1]!r}) is not an edit of this patch", f"edits[{i}]")
        for j, p in enumerate(x.get("paraphrases", [])):
            if p.count("{}") != 1:
                raise ProbeSetError("BAD_PROBE_SET", f"edits[{i}].paraphrases[{j}] {p!r} must hold one {{}} for the subject",
                                    f"edits[{i}].paraphrases[{j}]")
        out.append({"subject": key[0], "relation": key[1], "paraphrases": list(dict.fromkeys(x.get("paraphrases", [])))})
    return out


def edit_questions(manifest: dict, extras: list[dict]) -> tuple[list[Question], list[Question]]:
    extra = {(x["subject"], x["relation"]): x["paraphrases"] for x in extras}
    edits, paraphrases = [], []
    for e in manifest.get("edits", []):
        subject, target = e.get("subject", ""), e.get("target_new", "")
        prompt = e.get("prompt", "")
        if not subject or not target or "{}" not in prompt:
            continue
        edits.append(Question(EDIT, prompt.format(subject), target))
        for p in dict.fromkeys([*e.get("paraphrases", []), *extra.get((subject, e.get("relation", "")), [])]):
            if p != prompt and "{}" in p:
                paraphrases.append(Question(PARAPHRASE, p.format(subject), target))
    # A fact written with several phrasings is several edits with one target: ask each question once,
    # and never ask as a paraphrase what another edit already asks as its own prompt.
    asked = {(q.prompt, q.expect) for q in edits}
    edits = list(dict.fromkeys(edits))
    paraphrases = [q for q in dict.fromkeys(paraphrases) if (q.prompt, q.expect) not in asked]
    return edits, paraphrases


def sample(edits: list[Question], paraphrases: list[Question], regression: list[Question], size: int,
           rng: random.Random) -> list[Question]:
    """Up to `size` questions, edits first; each group sampled when it does not fit."""
    out: list[Question] = []
    for group in (edits, paraphrases, regression):
        room = size - len(out)
        if room <= 0:
            break
        out += group if len(group) <= room else rng.sample(group, room)
    return out


def answer_matches(answer: str, expect: str) -> bool:
    """The answer starts with the expected words (a completion may run on after the object)."""
    got = answer.strip().rstrip(".").split()
    want = expect.strip().split()
    return bool(want) and got[: len(want)] == want
