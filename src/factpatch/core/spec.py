"""The edit spec (DESIGN.md): YAML with an `edits:` list, or JSONL with one edit per line.

Parsing is strict and names the offending line/field, so bad input never reaches the editor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class SpecError(ValueError):
    """The edit spec is invalid; the message names the file, line or field."""


# YAML aliases let a few hundred bytes stand for billions of nodes once expanded (by validation
# or by writing the manifest); no real spec comes near this many.
MAX_NODES = 1_000_000


def _check_size(obj: Any, name: str) -> None:
    """Counts nodes as if every alias were expanded, and stops at MAX_NODES."""
    stack, seen = [obj], 0
    while stack:
        o = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise SpecError(f"{name}: spec expands to more than {MAX_NODES} values (YAML aliases?)")
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set)):
            stack.extend(o)


class Edit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str
    relation: str
    prompt: str
    target_new: str
    target_old: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    paraphrases: list[str] = Field(default_factory=list)  # extra phrasings, each with one {}
    # Other questions about this subject whose answers must not move (one {} each): the editor holds
    # them steady while it writes the new value, since the subject's other facts share its key.
    keep: list[str] = Field(default_factory=list)
    # Other subjects whose answer to this edit's question must not move (names sharing a word with the
    # subject, sister brands): the editor holds the edit's prompt asked of each, since a key that reads
    # the question may read theirs too.
    neighbours: list[str] = Field(default_factory=list)

    @field_validator("subject", "relation", "target_new")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("target_old")
    @classmethod
    def _strip_old(cls, v: str | None) -> str | None:
        return v.strip() if v is not None and v.strip() else None

    @field_validator("prompt")
    @classmethod
    def _one_placeholder(cls, v: str) -> str:
        if v.count("{}") != 1:
            raise ValueError("must contain the subject placeholder {} exactly once")
        return v

    @field_validator("paraphrases", "keep")
    @classmethod
    def _prompt_placeholders(cls, v: list[str], info: ValidationInfo) -> list[str]:
        label = {"paraphrases": "paraphrase", "keep": "keep prompt"}[info.field_name]
        for i, p in enumerate(v):
            if p.count("{}") != 1:
                raise ValueError(f"{label} {i} must contain {{}} exactly once")
        return v

    @field_validator("neighbours")
    @classmethod
    def _neighbour_names(cls, v: list[str]) -> list[str]:
        for i, n in enumerate(v):
            if not n or not n.strip():
                raise ValueError(f"neighbour {i} must not be empty")
        return [n.strip() for n in v]

    @model_validator(mode="after")
    def _new_differs_from_old(self) -> "Edit":
        if self.target_old is not None and self.target_old == self.target_new:
            raise ValueError("target_new equals target_old: the edit would change nothing")
        own = {self.prompt.strip(), *(p.strip() for p in self.paraphrases)}
        for i, p in enumerate(self.keep):
            if p.strip() in own:
                raise ValueError(f"keep prompt {i} ({p!r}) asks this edit's own question: it cannot both change and stay")
        if self.subject in self.neighbours:
            raise ValueError(f"neighbour {self.neighbours.index(self.subject)} is the edit's own subject {self.subject!r}")
        return self

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", self.subject)

    def manifest_entry(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=False)


class EditSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    edits: list[Edit]

    @model_validator(mode="after")
    def _no_conflicts(self) -> "EditSpec":
        if not self.edits:
            raise ValueError("spec holds no edits")
        seen: dict[tuple[str, str], tuple[int, str]] = {}
        for i, e in enumerate(self.edits):
            key = (e.subject, e.relation)
            if key in seen and seen[key][1] != e.target_new:
                j = seen[key][0]
                raise ValueError(
                    f"edits {j} and {i} give ({e.subject!r}, {e.relation!r}) different targets "
                    f"({seen[key][1]!r} vs {e.target_new!r})"
                )
            seen.setdefault(key, (i, e.target_new))
        asked: dict[str, dict[str, int]] = {}  # subject → prompt → the edit that changes it
        for i, e in enumerate(self.edits):
            for p in (e.prompt, *e.paraphrases):
                asked.setdefault(e.subject, {}).setdefault(p.strip(), i)
        for i, e in enumerate(self.edits):
            for j, p in enumerate(e.keep):
                other = asked.get(e.subject, {}).get(p.strip())
                if other is not None and other != i:
                    raise ValueError(f"edit {i} keeps {p!r} (keep prompt {j}) for {e.subject!r}, "
                                     f"but edit {other} changes that answer")
        return self


def _format_errors(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "spec"
        parts.append(f"{where}{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_obj(obj: Any, *, where: str = "") -> EditSpec:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}spec must be a mapping with an 'edits' list")
    try:
        return EditSpec.model_validate(obj)
    except ValidationError as e:
        raise SpecError(_format_errors(e, where)) from None


def parse_text(text: str, *, name: str = "<spec>") -> EditSpec:
    """Parse YAML (`edits:` mapping) or JSONL (one edit object per line)."""
    stripped = text.lstrip()
    if name.endswith(".jsonl") or (stripped.startswith("{") and "\n{" in stripped):
        edits = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SpecError(f"{name}: line {lineno}: not valid JSON ({e.msg})") from None
            except (ValueError, RecursionError) as e:  # an integer too long to convert; nesting too deep
                raise SpecError(f"{name}: line {lineno}: not valid JSON ({str(e)[:100]})") from None
            if not isinstance(obj, dict):
                raise SpecError(f"{name}: line {lineno}: each line must be a JSON object")
            try:
                edits.append(Edit.model_validate(obj))
            except ValidationError as e:
                raise SpecError(_format_errors(e, f"{name}: line {lineno}: ")) from None
        return parse_obj({"edits": [e.model_dump() for e in edits]}, where=f"{name}: ")
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(f"{name}: {at}not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:  # the YAML parser recurses once per nesting level
        raise SpecError(f"{name}: not valid YAML (nested too deeply)") from None
    _check_size(obj, name)
    return parse_obj(obj, where=f"{name}: ")


def load(path: str | Path) -> EditSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read spec ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_text(text, name=str(path))


def from_manifest(entries: list[dict]) -> "EditSpec":
    """The spec a patch was made from, out of its manifest's edits (what the editor recorded beside each
    edit, such as how it was written, is left out)."""
    return parse_obj({"edits": [{k: v for k, v in e.items() if k in Edit.model_fields} for e in entries]})
