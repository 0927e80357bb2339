"""The live monitor set: file monitors, API monitors (kept in the state database) and stale-value
monitors from stored patches, compiled together. Changes compile a new set off the request path
and swap it in; requests already running keep the set they started with.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

import hyperscan

from factpatch.server.monitors import stale
from factpatch.server.monitors.config import API, PATCH, Monitor, MonitorError, MonitorsConfig, validate
from factpatch.server.monitors.engine import CompiledMonitors
from factpatch.server.monitors.patterns import hyperscan_error
from factpatch.server.state.db import Database

log = logging.getLogger("factpatch.monitors")

SCHEMA = """
CREATE TABLE IF NOT EXISTS monitors (
  name TEXT PRIMARY KEY, kind TEXT NOT NULL, pattern TEXT NOT NULL, ignore_case INTEGER NOT NULL,
  scope_subject TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL, created REAL NOT NULL);
"""


class MonitorRegistry:
    def __init__(self, db: Database, config: MonitorsConfig,
                 on_change: Callable[[CompiledMonitors], None] | None = None):
        self.db = db
        self.config = config
        self.on_change = on_change
        with db.tx() as c:
            c.execute(SCHEMA)
        self._lock = threading.Lock()  # one writer compiles at a time
        self._patches: tuple[str, ...] = ()
        self.compiled = CompiledMonitors([])
        self.rebuild()

    @property
    def limit(self) -> int:
        return self.config.max_monitors

    def _api_monitors(self) -> list[Monitor]:
        return [
            Monitor(name=r["name"], kind=r["kind"], pattern=r["pattern"], ignore_case=bool(r["ignore_case"]),
                    scope_subject=r["scope_subject"], source=API, created_by=r["created_by"], created=r["created"])
            for r in self.db.q("SELECT * FROM monitors ORDER BY name")
        ]

    def _stale_monitors(self) -> tuple[tuple[str, ...], list[Monitor]]:
        rows = self.db.q("SELECT digest, manifest, imported_at FROM patches ORDER BY digest")
        digests = tuple(r["digest"] for r in rows)
        if not self.config.stale_enabled:
            return digests, []
        mons = stale.from_manifests(((r["digest"], json.loads(r["manifest"])) for r in rows), self.config.stale_scope_subject)
        # newest patches first: when the monitor label is capped, the edits being rolled out now keep theirs
        imported = {r["digest"]: r["imported_at"] for r in rows}
        mons.sort(key=lambda m: (-max(imported.get(d, 0.0) for d in m.patches), m.name))
        return digests, mons

    def rebuild(self) -> CompiledMonitors:
        with self._lock:
            digests, stale_mons = self._stale_monitors()
            user = [*self.config.monitors, *self._api_monitors()]
            taken = {m.name for m in user}
            monitors = user + [m for m in stale_mons if m.name not in taken]
            t0 = time.perf_counter()
            try:
                compiled = CompiledMonitors(monitors)
            except hyperscan.error:
                # one pattern hyperscan refuses (a stale value from a stored patch: any text) must not
                # stop every other monitor, nor the next start
                bad = {m.name for m in monitors if hyperscan_error(m.expression(), m.ignore_case)}
                log.error("monitors left out, hyperscan cannot compile them: %s", sorted(bad))
                monitors = [m for m in monitors if m.name not in bad]
                compiled = CompiledMonitors(monitors)
            log.info("compiled %d monitors in %.3f s", len(monitors), time.perf_counter() - t0)
            self._patches = digests
            self.compiled = compiled
        if self.on_change:
            self.on_change(compiled)
        return compiled

    def refresh_patches(self) -> None:
        """Recompile when the stored patches changed (their edits give the stale-value monitors)."""
        digests = tuple(r["digest"] for r in self.db.q("SELECT digest FROM patches ORDER BY digest"))
        if digests != self._patches:
            self.rebuild()

    # the API

    def list(self) -> list[Monitor]:
        return list(self.compiled.monitors)

    def create(self, m: Monitor, principal: str) -> Monitor:
        validate(m)
        with self._lock:
            names = {x.name for x in self.compiled.monitors}
            if m.name in names:
                raise MonitorError("MONITOR_EXISTS", f"a monitor named {m.name!r} already exists", "name")
            user = len(self.config.monitors) + len(self._api_monitors())
            if user + 1 > self.limit:
                raise MonitorError("TOO_MANY_MONITORS",
                                   f"{user} monitors are configured; the limit is {self.limit} (max_monitors)")
            m = Monitor(name=m.name, kind=m.kind, pattern=m.pattern, ignore_case=m.ignore_case,
                        scope_subject=m.scope_subject, source=API, created_by=principal, created=time.time())
            with self.db.tx() as c:
                c.execute("INSERT INTO monitors VALUES (?,?,?,?,?,?,?)",
                          (m.name, m.kind, m.pattern, int(m.ignore_case), m.scope_subject, m.created_by, m.created))
        self.rebuild()
        return m

    def delete(self, name: str) -> None:
        found = next((m for m in self.compiled.monitors if m.name == name), None)
        if found is None:
            raise MonitorError("MONITOR_NOT_FOUND", f"no monitor named {name!r}", "name")
        if found.source != API:
            where = "the monitors file" if found.source != PATCH else "a stored patch's edits"
            raise MonitorError("MONITOR_NOT_DELETABLE", f"monitor {name!r} comes from {where}; change that instead", "name")
        with self.db.tx() as c:
            c.execute("DELETE FROM monitors WHERE name=?", (name,))
        self.rebuild()

    def stale_for_patch(self, digest: str) -> list[Monitor]:
        return [m for m in self.compiled.monitors if m.source == PATCH and digest in m.patches]
