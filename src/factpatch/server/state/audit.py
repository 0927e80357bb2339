"""Audit log of mutating calls and of the control plane's own actions: who, from where, what, on
what, with what result, when.

A record is written before the action runs (result PENDING) and settled after, so an action cut
short by a crash still leaves its trace; `settle_interrupted` marks those INTERRUPTED at the next
start. Refused calls without a valid token are counted per (source, method, reason) and minute in
one record, so an unauthenticated flood cannot grow the log (or its fsyncs) without bound.

Tamper evidence: `audit` holds one row per record for reading; every write to it is also an event
in `audit_events`, appended in the same transaction, whose hash covers its content and the
previous event's hash. `verify` walks the chain and replays it: an event edited or removed breaks
the chain, a record edited, added or deleted in `audit` no longer matches its replay. A chain
rewritten from its first event by someone with write access to the database is caught only
against an earlier head hash kept elsewhere (the API returns it with every listing).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass

from factpatch.server.state.db import Database

GENESIS = "sha256:" + "0" * 64
PENDING, INTERRUPTED = "PENDING", "INTERRUPTED"
FIELDS = ("time", "principal", "source", "method", "request_id", "target", "result", "detail")
REFUSAL_WINDOW_S = 60.0


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
    source: str = ""


@dataclass
class Verdict:
    intact: bool
    records: int
    events: int
    head: str
    first_broken_record: int = 0
    problem: str = ""


@dataclass
class _RefusalWindow:
    record: int
    start: float
    count: int = 1
    result: str = ""
    written: int = 0  # the count the record says


def _digest(prev: str, seq: int, record: int, kind: str, body: str) -> str:
    h = hashlib.sha256()
    for part in (prev, str(seq), str(record), kind, body):
        h.update(part.encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


class AuditLog:
    def __init__(self, db: Database, refusal_window_s: float = REFUSAL_WINDOW_S):
        self.db = db
        self.refusal_window_s = refusal_window_s
        self._refusals: dict[tuple[str, str, str, str], _RefusalWindow] = {}
        self._refusals_lock = threading.Lock()
        self._seal_unchained()

    # --- writing -------------------------------------------------------------------------------

    def _append(self, c, record: int, kind: str, values: dict) -> None:
        last = c.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
        body = json.dumps(values, sort_keys=True, separators=(",", ":"))
        c.execute("INSERT INTO audit_events (seq, record, kind, body, prev, hash) VALUES (?,?,?,?,?,?)",
                  (seq, record, kind, body, prev, _digest(prev, seq, record, kind, body)))

    def begin(self, principal: str, method: str, request_id: str = "", target: str = "", source: str = "") -> int:
        values = {"time": time.time(), "principal": principal, "source": source, "method": method,
                  "request_id": request_id, "target": target, "result": PENDING, "detail": ""}
        with self.db.tx() as c:
            cur = c.execute(
                "INSERT INTO audit (time, principal, source, method, request_id, target, result, detail) "
                "VALUES (:time,:principal,:source,:method,:request_id,:target,:result,:detail)", values)
            record = int(cur.lastrowid)
            self._append(c, record, "begin", values)
            return record

    def finish(self, entry_id: int, result: str, detail: str = "", target: str | None = None,
               request_id: str | None = None) -> None:
        values = {"result": result, "detail": detail}
        if target:
            values["target"] = target
        if request_id:
            values["request_id"] = request_id
        with self.db.tx() as c:
            c.execute(f"UPDATE audit SET {', '.join(f'{k}=:{k}' for k in values)} WHERE id=:id", {**values, "id": entry_id})
            self._append(c, entry_id, "finish", values)

    def record(self, principal: str, method: str, target: str, result: str, detail: str = "", source: str = "") -> None:
        """One-shot entry, for an outcome known at once (a refusal)."""
        self.finish(self.begin(principal, method, "", target, source), result, detail)

    def record_in(self, c, principal: str, method: str, target: str, result: str, detail: str = "") -> None:
        """A one-shot entry written in the caller's transaction: it commits with the change it records,
        or not at all (a rollout transition and its record can never be found one without the other)."""
        values = {"time": time.time(), "principal": principal, "source": "", "method": method,
                  "request_id": "", "target": target, "result": PENDING, "detail": ""}
        cur = c.execute(
            "INSERT INTO audit (time, principal, source, method, request_id, target, result, detail) "
            "VALUES (:time,:principal,:source,:method,:request_id,:target,:result,:detail)", values)
        record = int(cur.lastrowid)
        self._append(c, record, "begin", values)
        done = {"result": result, "detail": detail}
        c.execute("UPDATE audit SET result=:result, detail=:detail WHERE id=:id", {**done, "id": record})
        self._append(c, record, "finish", done)

    def refused(self, principal: str, source: str, method: str, result: str) -> None:
        """A call refused before it ran. Known principals get a record each; calls without a valid
        token are counted in one record per source, method, reason and window, and the count is
        written at 1-16 and then at powers of two (a flood costs log₂ n writes, not n);
        `flush_refusals` writes the exact counts."""
        if principal not in ("anonymous", ""):
            self.record(principal, method, "", result, source=source)
            return
        host = source.rsplit(":", 1)[0] if source.count(":") > 1 else source  # ipv4:1.2.3.4:port -> ipv4:1.2.3.4
        key = (host, principal, method, result)
        now = time.time()
        with self._refusals_lock:
            window = self._refusals.get(key)
            if window is not None and now - window.start < self.refusal_window_s:
                window.count += 1
                count, record = window.count, window.record
                write = count <= 16 or count & (count - 1) == 0
                if write:
                    window.written = count
            else:
                window = None
        if window is not None:
            if write:
                self.finish(record, result, _refusal_detail(count, host, window.start))
            return
        record = self.begin(principal or "anonymous", method, "", "", host)
        self.finish(record, result, _refusal_detail(1, host, now))
        with self._refusals_lock:
            self._refusals[key] = _RefusalWindow(record, now, 1, result, written=1)
            crowded = len(self._refusals) > 4096
        if crowded:  # settle and forget the windows that are over
            self.flush_refusals(closed_only=True)

    def flush_refusals(self, closed_only: bool = False) -> None:
        """Write the exact count of every refusal window whose record lags behind (at stop, before a
        listing); with `closed_only`, only of windows that are over, which are then forgotten."""
        now = time.time()
        with self._refusals_lock:
            due = [(k, w) for k, w in self._refusals.items()
                   if w.count != w.written and (not closed_only or now - w.start >= self.refusal_window_s)]
            for _, w in due:
                w.written = w.count
            if closed_only:
                self._refusals = {k: w for k, w in self._refusals.items() if now - w.start < self.refusal_window_s}
        for (host, _, _, _), w in due:
            self.finish(w.record, w.result, _refusal_detail(w.count, host, w.start))

    def settle_interrupted(self) -> int:
        """At start: records a crash left PENDING become INTERRUPTED. Returns how many."""
        stale = [r["id"] for r in self.db.q("SELECT id FROM audit WHERE result=?", (PENDING,))]
        for record in stale:
            self.finish(record, INTERRUPTED, "the control plane stopped before this finished")
        return len(stale)

    def _seal_unchained(self) -> None:
        """Records written before the chain existed (an older state directory) enter it once, as they are."""
        with self.db.tx() as c:
            chained = c.execute("SELECT MAX(record) AS m FROM audit_events").fetchone()["m"]
            if chained is not None:
                return
            for row in c.execute("SELECT * FROM audit ORDER BY id").fetchall():
                self._append(c, row["id"], "begin", {k: row[k] for k in FIELDS})

    # --- reading -------------------------------------------------------------------------------

    def entries(self, limit: int = 1000, before_id: int = 0, principal: str = "") -> list[AuditEntry]:
        sql, args = "SELECT * FROM audit WHERE 1=1", []
        if before_id:
            sql, args = sql + " AND id < ?", [*args, before_id]
        if principal:
            sql, args = sql + " AND principal = ?", [*args, principal]
        rows = self.db.q(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditEntry(**dict(r)) for r in rows]

    def head(self) -> str:
        rows = self.db.q("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        return rows[0]["hash"] if rows else GENESIS

    def verify(self) -> Verdict:
        events = self.db.q("SELECT * FROM audit_events ORDER BY seq")
        records = {r["id"]: dict(r) for r in self.db.q("SELECT * FROM audit")}
        replayed: dict[int, dict] = {}
        prev = GENESIS
        for i, e in enumerate(events, 1):
            if e["seq"] != i:
                return Verdict(False, len(records), len(events), prev, e["record"],
                               f"event {i} is missing (the chain jumps to {e['seq']})")
            if e["prev"] != prev or e["hash"] != _digest(prev, e["seq"], e["record"], e["kind"], e["body"]):
                return Verdict(False, len(records), len(events), prev, e["record"],
                               f"event {e['seq']}: its hash does not match its content or its predecessor")
            body = json.loads(e["body"])
            if e["kind"] == "begin":
                replayed[e["record"]] = {k: body.get(k, "") for k in FIELDS}
            elif e["record"] in replayed:
                replayed[e["record"]].update(body)
            prev = e["hash"]
        head = prev
        for record in sorted(set(records) | set(replayed)):
            if record not in records:
                return Verdict(False, len(records), len(events), head, record, f"record {record} was deleted")
            if record not in replayed:
                return Verdict(False, len(records), len(events), head, record,
                               f"record {record} was added outside the log (no event wrote it)")
            have, want = records[record], replayed[record]
            for k in FIELDS:
                if have[k] != want[k]:
                    return Verdict(False, len(records), len(events), head, record,
                                   f"record {record}: {k} is {have[k]!r}, the log wrote {want[k]!r}")
        return Verdict(True, len(records), len(events), head)


def _refusal_detail(count: int, host: str, since: float) -> str:
    return f"{count} call{'s' if count > 1 else ''} refused from {host} since {_iso(since)}"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

