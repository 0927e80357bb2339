"""Audit log of mutating calls: who, what, which request id, on what, with what result, when.

A row is written before the call runs (result PENDING) and completed after, so a call cut short by a
crash still leaves its trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from factpatch.server.state.db import Database


@dataclass
class AuditEntry:
    id: int
    time: float
    principal: str
    method: str
    request_id: str
    target: str
    result: str
    detail: str


class AuditLog:
    def __init__(self, db: Database):
        self.db = db

    def begin(self, principal: str, method: str, request_id: str = "", target: str = "") -> int:
        with self.db.tx() as c:
            cur = c.execute(
                "INSERT INTO audit (time, principal, method, request_id, target, result) VALUES (?,?,?,?,?,?)",
                (time.time(), principal, method, request_id, target, "PENDING"),
            )
            return int(cur.lastrowid)

    def finish(
        self, entry_id: int, result: str, detail: str = "", target: str | None = None, request_id: str | None = None
    ) -> None:
        with self.db.tx() as c:
            c.execute("UPDATE audit SET result=?, detail=? WHERE id=?", (result, detail, entry_id))
            if target:
                c.execute("UPDATE audit SET target=? WHERE id=?", (target, entry_id))
            if request_id:
                c.execute("UPDATE audit SET request_id=? WHERE id=?", (request_id, entry_id))

    def record(self, principal: str, method: str, target: str, result: str, detail: str = "") -> None:
        """One-shot entry, for actions the control plane takes on its own (reconciler)."""
        self.finish(self.begin(principal, method, "", target), result, detail)

    def entries(self, limit: int = 1000) -> list[AuditEntry]:
        rows = self.db.q("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [AuditEntry(**dict(r)) for r in rows]
