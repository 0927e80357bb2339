"""Stale-value monitors: one per (subject, relation, target_old) found in stored patches' edits.

A patch replaces `target_old` with `target_new`; an answer still holding `target_old` is stale. The
same edit carried by a patch and its follow-up gives one monitor that names both patches.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from factpatch.server.monitors.config import PATCH, STALE, Monitor


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:40] or "x"


def monitor_name(subject: str, relation: str, target_old: str) -> str:
    return f"stale:{_slug(subject)}:{_slug(relation)}:{_slug(target_old)}"


def from_manifests(manifests: Iterable[tuple[str, dict]], scope_subject: bool = True) -> list[Monitor]:
    """Monitors for every edit with a target_old, from (digest, manifest) pairs."""
    found: dict[str, tuple[dict, list[str]]] = {}
    for digest, manifest in manifests:
        for e in manifest.get("edits") or []:
            old = str(e.get("target_old") or "").strip()
            subject = str(e.get("subject") or "").strip()
            if not old or not subject:
                continue
            name = monitor_name(subject, str(e.get("relation") or ""), old)
            entry = found.setdefault(name, (e, []))
            if digest not in entry[1]:
                entry[1].append(digest)
    return [
        Monitor(name=name, kind=STALE, pattern=str(e["target_old"]).strip(), ignore_case=True,
                scope_subject=str(e["subject"]).strip() if scope_subject else "", source=PATCH,
                patches=tuple(sorted(digests)))
        for name, (e, digests) in sorted(found.items())
    ]


def names_for_patch(manifest_json: str) -> list[str]:
    """The stale-value monitor names a patch's edits give (what canary analysis watches for it)."""
    m = json.loads(manifest_json) if isinstance(manifest_json, str) else manifest_json
    return [mon.name for mon in from_manifests([("", m)])]
