"""Keeps the control plane's live views current after every change of its state database: the
monitors when the stored patches change (their edits give the stale-value monitors, which canary
analysis and gateway processes read), and the routing table (the in-process gateway routes by it,
the shard gauges read it)."""

from __future__ import annotations

import logging
import threading

from factpatch.server.gateway.routing import Router
from factpatch.server.monitors.registry import MonitorRegistry
from factpatch.server.state.db import Database

log = logging.getLogger("factpatch.gateway")


class StateFollower:
    def __init__(self, db: Database, router: Router, monitors: MonitorRegistry):
        self.db, self.router, self.monitors = db, router, monitors
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        router.refresh()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="state-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.db.nudge()  # wakes the wait now, not at its timeout
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        gen = -1
        while not self._stop.is_set():
            gen = self.db.wait_for_change(gen, 1.0)
            try:
                self.router.refresh()
                self.monitors.refresh_patches()
            except Exception:
                if not self._stop.is_set():
                    log.exception("refreshing routes failed")
