"""Stale-value monitors: one per (subject, relation, target_old) found in stored patches' edits.

A patch replaces `target_old` with `target_new`; an answer still holding `target_old` is stale. The
same edit carried by a patch and its follow-up gives one monitor that names both patches.

A monitor's name is a Prometheus label value on every scrape, alert and dashboard, so it identifies the
edit without saying what it is about: `stale:<ticket>:<edit id>`, the ticket from the edit's provenance
(`edit` when it has none) and a short hash of subject, relation and old value. The old value itself
stays in the monitor's pattern, which only the authenticated API shows (`factpatch ctl monitors list`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Iterable

from factpatch.server.monitors.config import PATCH, STALE, Monitor

EDIT_ID_HEX = 10


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:24] or "x"


def edit_id(subject: str, relation: str, target_old: str) -> str:
    """The same for the same fact and old value whatever the case or surrounding spaces."""
    key = "\0".join(x.strip().lower() for x in (subject, relation, target_old))
    return hashlib.sha256(key.encode()).hexdigest()[:EDIT_ID_HEX]


def monitor_name(subject: str, relation: str, target_old: str, ticket: str = "") -> str:
    return f"stale:{_slug(ticket) if ticket.strip() else 'edit'}:{edit_id(subject, relation, target_old)}"


def from_manifests(manifests: Iterable[tuple[str, dict]], scope_subject: bool = True) -> list[Monitor]:
    """Monitors for every edit with a target_old, from (digest, manifest) pairs. An edit carried by
    several patches with different tickets is named after the first ticket in sort order."""
    found: dict[str, tuple[dict, list[str], set[str]]] = {}
    for digest, manifest in manifests:
        for e in manifest.get("edits") or []:
            old = str(e.get("target_old") or "").strip()
            subject = str(e.get("subject") or "").strip()
            if not old or not subject:
                continue
            entry = found.setdefault(edit_id(subject, str(e.get("relation") or ""), old), (e, [], set()))
            if digest not in entry[1]:
                entry[1].append(digest)
            ticket = str((e.get("provenance") or {}).get("ticket") or "").strip() if isinstance(e.get("provenance"), dict) else ""
            if ticket:
                entry[2].add(ticket)
    monitors = [
        Monitor(name=monitor_name(str(e["subject"]), str(e.get("relation") or ""), str(e["target_old"]),
                                  min(tickets) if tickets else ""),
                kind=STALE, pattern=str(e["target_old"]).strip(), ignore_case=True,
                scope_subject=str(e["subject"]).strip() if scope_subject else "", source=PATCH,
                patches=tuple(sorted(digests)))
        for e, digests, tickets in found.values()
    ]
    return sorted(monitors, key=lambda m: m.name)


def names_for_patch(manifest_json: str) -> list[str]:
    """The stale-value monitor names a patch's edits give (what canary analysis watches for it)."""
    m = json.loads(manifest_json) if isinstance(manifest_json, str) else manifest_json
    return [mon.name for mon in from_manifests([("", m)])]
