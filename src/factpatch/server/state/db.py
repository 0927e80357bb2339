"""The control plane's state in SQLite (WAL): patch metadata, shards and their desired versions,
rollouts, request-id answers, base compatibility learned from shards, and the audit log.

Everything the reconciler needs to resume after a restart is here; the patch bytes live in the
store. One connection shared by the server's threads behind a lock: writes are small and short.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from factpatch.core.shard_endpoints import default_agent_address
from factpatch.server.state.rollout_state import ACTIVE

SCHEMA = """
CREATE TABLE IF NOT EXISTS patches (
  digest TEXT PRIMARY KEY, size INTEGER NOT NULL, manifest TEXT NOT NULL,
  base_model TEXT, base_fingerprint TEXT, imported_at REAL NOT NULL, imported_by TEXT,
  tensors TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS shards (
  name TEXT PRIMARY KEY, address TEXT NOT NULL, registered_at REAL NOT NULL,
  desired_version TEXT, desired_since REAL,
  observed TEXT, health TEXT NOT NULL DEFAULT 'UNSPECIFIED', last_seen REAL,
  last_error_reason TEXT NOT NULL DEFAULT '', last_error TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY, patch TEXT NOT NULL, state TEXT NOT NULL, steps TEXT NOT NULL,
  current_step INTEGER NOT NULL, etag TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
  message TEXT NOT NULL DEFAULT '', gates TEXT NOT NULL DEFAULT '[]',
  progress_deadline_s INTEGER NOT NULL, created_by TEXT NOT NULL,
  created REAL NOT NULL, updated REAL NOT NULL, step_started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_shards (
  rollout_id TEXT NOT NULL, shard TEXT NOT NULL, previous_version TEXT,
  desired_version TEXT, error_reason TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (rollout_id, shard));
CREATE TABLE IF NOT EXISTS requests (
  request_id TEXT PRIMARY KEY, method TEXT NOT NULL, request_hash TEXT NOT NULL,
  response_type TEXT, response BLOB, code TEXT, reason TEXT, message TEXT, created REAL NOT NULL,
  metadata TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS base_compat (
  patch_fingerprint TEXT NOT NULL, shard_fingerprint TEXT NOT NULL, compatible INTEGER NOT NULL,
  reason TEXT NOT NULL DEFAULT '', PRIMARY KEY (patch_fingerprint, shard_fingerprint));
CREATE TABLE IF NOT EXISTS probe_sets (
  patch TEXT PRIMARY KEY, edits TEXT NOT NULL, updated REAL NOT NULL, updated_by TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, principal TEXT NOT NULL,
  method TEXT NOT NULL, request_id TEXT NOT NULL DEFAULT '', target TEXT NOT NULL DEFAULT '',
  result TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '');
-- The versions each shard was released on (a rollout that succeeded, a revert, a rollback): what
-- Rollback goes back along. version NULL = base.
CREATE TABLE IF NOT EXISTS releases (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, shard TEXT NOT NULL, version TEXT, source TEXT NOT NULL,
  principal TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS releases_by_shard ON releases (shard, seq);
-- Append-only: every write to `audit` as an event, each hash covering the previous one (audit.py).
CREATE TABLE IF NOT EXISTS audit_events (
  seq INTEGER PRIMARY KEY, record INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
  prev TEXT NOT NULL, hash TEXT NOT NULL);
"""



@dataclass
class Shard:
    name: str
    address: str  # the OpenAI server (model traffic)
    agent_address: str  # the agent's own port (weight changes)
    desired_version: str | None
    observed: dict[str, Any]
    health: str
    last_seen: float | None
    last_error_reason: str
    last_error: str


@dataclass(frozen=True)
class Release:
    shard: str
    version: str | None  # None = base
    source: str
    principal: str
    time: float


@dataclass
class RolloutShard:
    shard: str
    previous_version: str | None
    desired_version: str | None
    error_reason: str = ""
    error: str = ""


@dataclass
class Rollout:
    id: str
    patch: str
    state: str
    steps: list[dict[str, Any]]  # [{"shards": [...], "traffic_percent": n}]
    current_step: int
    etag: str
    reason: str
    message: str
    gates: list[dict[str, Any]]
    progress_deadline_s: int
    created_by: str
    created: float
    updated: float
    step_started: float
    shards: list[RolloutShard] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def target_shards(self) -> list[str]:
        return list(self.steps[-1]["shards"]) if self.steps else []


class Database:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # an acknowledged call survives a crash
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)
        # Columns added since the first release, for state directories made before each.
        self._add_missing_column("audit", "source", "TEXT NOT NULL DEFAULT ''")
        self._add_missing_column("patches", "signature", "BLOB")  # signed patches
        self._add_missing_column("patches", "signed_by", "TEXT NOT NULL DEFAULT ''")
        # the agent's own port: NULL reads as the default agent address
        self._add_missing_column("shards", "agent_address", "TEXT")
        # stored refusals keep their ErrorInfo metadata (the field at fault)
        self._add_missing_column("requests", "metadata", "TEXT NOT NULL DEFAULT '{}'")
        self._changed = threading.Condition(self._lock)
        self._generation = 0

    def _add_missing_column(self, table: str, column: str, definition: str) -> None:
        if column not in {r["name"] for r in self._conn.execute(f"PRAGMA table_info({table})")}:
            self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")  # a full disk fails here too: then nothing of it stays
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._generation += 1
            self._changed.notify_all()

    def q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def wait_for_change(self, generation: int, timeout: float) -> int:
        """Blocks until a write commits after `generation` (or timeout); returns the new generation."""
        with self._changed:
            if self._generation == generation:
                self._changed.wait(timeout)
            return self._generation

    def nudge(self) -> None:
        """Wakes every wait_for_change as a write would: a change held outside the database (a swap
        beginning or ending) that watchers of the routing state must see."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    @property
    def generation(self) -> int:
        return self._generation

    # patches

    def add_patch(self, digest: str, size: int, manifest: dict, tensors: list[str], principal: str,
                  signature: bytes | None = None, signed_by: str = "") -> None:
        """A patch imported again keeps its first record; a signature it now brings is added to it."""
        base = manifest.get("base") or {}
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO patches (digest, size, manifest, base_model, base_fingerprint, imported_at, "
                "imported_by, tensors, signature, signed_by) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (digest, size, json.dumps(manifest), base.get("model"), base.get("fingerprint"), time.time(),
                 principal, json.dumps(tensors), signature, signed_by),
            )
            if signature:
                c.execute("UPDATE patches SET signature=?, signed_by=? WHERE digest=?", (signature, signed_by, digest))

    def patch(self, digest: str) -> sqlite3.Row | None:
        rows = self.q("SELECT * FROM patches WHERE digest=?", (digest,))
        return rows[0] if rows else None

    def patch_digests(self) -> set[str]:
        return {r["digest"] for r in self.q("SELECT digest FROM patches")}

    def patches(self, limit: int, offset: int) -> list[sqlite3.Row]:
        return self.q("SELECT * FROM patches ORDER BY imported_at DESC, digest LIMIT ? OFFSET ?", (limit, offset))

    def delete_patch(self, digest: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM patches WHERE digest=?", (digest,))

    def patch_users(self, digest: str) -> list[str]:
        """Shards that want or run the patch, and unfinished rollouts of it."""
        users = []
        for s in self.shards():
            if s.desired_version == digest or s.observed.get("active_version") == digest:
                users.append(f"shard:{s.name}")
        for r in self.rollouts(active_only=True):
            if r.patch == digest:
                users.append(f"rollout:{r.id}")
        return users

    # shards

    def _shard(self, row: sqlite3.Row) -> Shard:
        return Shard(
            name=row["name"],
            address=row["address"],
            agent_address=row["agent_address"] or default_agent_address(row["address"]),
            desired_version=row["desired_version"],
            observed=json.loads(row["observed"]) if row["observed"] else {},
            health=row["health"],
            last_seen=row["last_seen"],
            last_error_reason=row["last_error_reason"],
            last_error=row["last_error"],
        )

    def shard(self, name: str) -> Shard | None:
        rows = self.q("SELECT * FROM shards WHERE name=?", (name,))
        return self._shard(rows[0]) if rows else None

    def shards(self) -> list[Shard]:
        return [self._shard(r) for r in self.q("SELECT * FROM shards ORDER BY name")]

    def add_shard(self, name: str, address: str, agent_address: str | None = None) -> None:
        agent_address = agent_address or default_agent_address(address)
        with self.tx() as c:
            c.execute(
                "INSERT INTO shards (name, address, agent_address, registered_at) VALUES (?,?,?,?)",
                (name, address, agent_address, time.time()),
            )

    def remove_shard(self, name: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM shards WHERE name=?", (name,))
            c.execute("DELETE FROM releases WHERE shard=?", (name,))  # a new shard of that name starts afresh

    def set_desired(self, c: sqlite3.Connection, name: str, version: str | None) -> None:
        c.execute(
            "UPDATE shards SET desired_version=?, desired_since=? WHERE name=?", (version, time.time(), name)
        )

    def observe(
        self, name: str, observed: dict | None, health: str, error_reason: str = "", error: str = ""
    ) -> None:
        with self.tx() as c:
            if observed is not None:
                c.execute(
                    "UPDATE shards SET observed=?, health=?, last_seen=?, last_error_reason=?, last_error=? WHERE name=?",
                    (json.dumps(observed), health, time.time(), error_reason, error, name),
                )
            else:
                c.execute(
                    "UPDATE shards SET health=?, last_error_reason=?, last_error=? WHERE name=?",
                    (health, error_reason, error, name),
                )

    # rollouts

    def _rollout(self, row: sqlite3.Row) -> Rollout:
        shards = [
            RolloutShard(r["shard"], r["previous_version"], r["desired_version"], r["error_reason"], r["error"])
            for r in self.q("SELECT * FROM rollout_shards WHERE rollout_id=? ORDER BY shard", (row["id"],))
        ]
        return Rollout(
            id=row["id"],
            patch=row["patch"],
            state=row["state"],
            steps=json.loads(row["steps"]),
            current_step=row["current_step"],
            etag=row["etag"],
            reason=row["reason"],
            message=row["message"],
            gates=json.loads(row["gates"]),
            progress_deadline_s=row["progress_deadline_s"],
            created_by=row["created_by"],
            created=row["created"],
            updated=row["updated"],
            step_started=row["step_started"],
            shards=shards,
        )

    def rollout(self, rollout_id: str) -> Rollout | None:
        rows = self.q("SELECT * FROM rollouts WHERE id=?", (rollout_id,))
        return self._rollout(rows[0]) if rows else None

    def rollouts(self, active_only: bool = False, limit: int = 1000, offset: int = 0) -> list[Rollout]:
        sql = "SELECT * FROM rollouts"
        if active_only:
            sql += " WHERE state IN (%s)" % ",".join("?" * len(ACTIVE))
        sql += " ORDER BY created DESC, id LIMIT ? OFFSET ?"  # id: a total order, so pages neither repeat nor skip
        args = (*ACTIVE, limit, offset) if active_only else (limit, offset)
        return [self._rollout(r) for r in self.q(sql, args)]

    def insert_rollout(self, c: sqlite3.Connection, r: Rollout) -> None:
        c.execute(
            "INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.id, r.patch, r.state, json.dumps(r.steps), r.current_step, r.etag, r.reason, r.message,
                json.dumps(r.gates), r.progress_deadline_s, r.created_by, r.created, r.updated, r.step_started,
            ),
        )

    def update_rollout(self, c: sqlite3.Connection, r: Rollout) -> None:
        c.execute(
            "UPDATE rollouts SET state=?, current_step=?, etag=?, reason=?, message=?, updated=?, step_started=? "
            "WHERE id=?",
            (r.state, r.current_step, r.etag, r.reason, r.message, r.updated, r.step_started, r.id),
        )

    def upsert_rollout_shard(self, c: sqlite3.Connection, rollout_id: str, s: RolloutShard) -> None:
        c.execute(
            "INSERT INTO rollout_shards VALUES (?,?,?,?,?,?) ON CONFLICT(rollout_id, shard) DO UPDATE SET "
            "desired_version=excluded.desired_version, error_reason=excluded.error_reason, error=excluded.error",
            (rollout_id, s.shard, s.previous_version, s.desired_version, s.error_reason, s.error),
        )

    # release history

    def add_release(self, c: sqlite3.Connection, shard: str, version: str | None, source: str, principal: str) -> None:
        c.execute("INSERT INTO releases (shard, version, source, principal, time) VALUES (?,?,?,?,?)",
                  (shard, version, source, principal, time.time()))

    def releases(self, shard: str, limit: int = 20) -> list[Release]:
        """The shard's releases, newest first."""
        rows = self.q("SELECT * FROM releases WHERE shard=? ORDER BY seq DESC LIMIT ?", (shard, limit))
        return [Release(r["shard"], r["version"], r["source"], r["principal"], r["time"]) for r in rows]

    # request ids

    def request(self, request_id: str) -> sqlite3.Row | None:
        rows = self.q("SELECT * FROM requests WHERE request_id=?", (request_id,))
        return rows[0] if rows else None

    def save_request(
        self, request_id: str, method: str, request_hash: str, *, response_type: str | None = None,
        response: bytes | None = None, code: str | None = None, reason: str | None = None, message: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO requests (request_id, method, request_hash, response_type, response, code, reason,"
                " message, created, metadata) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (request_id, method, request_hash, response_type, response, code, reason, message, time.time(),
                 json.dumps(metadata or {})),
            )

    # base compatibility learned from shards' answers

    def compat(self, patch_fp: str, shard_fp: str) -> sqlite3.Row | None:
        rows = self.q(
            "SELECT * FROM base_compat WHERE patch_fingerprint=? AND shard_fingerprint=?", (patch_fp, shard_fp)
        )
        return rows[0] if rows else None

    def set_compat(self, patch_fp: str, shard_fp: str, compatible: bool, reason: str = "") -> None:
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO base_compat VALUES (?,?,?,?)", (patch_fp, shard_fp, int(compatible), reason)
            )

    # probes

    def probe_set(self, patch: str) -> list[dict]:
        rows = self.q("SELECT edits FROM probe_sets WHERE patch=?", (patch,))
        return json.loads(rows[0]["edits"]) if rows else []

    def set_probe_set(self, patch: str, edits: list[dict], principal: str) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO probe_sets (patch, edits, updated, updated_by) VALUES (?,?,?,?)",
                      (patch, json.dumps(edits), time.time(), principal))

    def setting(self, key: str) -> Any:
        rows = self.q("SELECT value FROM settings WHERE key=?", (key,))
        return json.loads(rows[0]["value"]) if rows else None

    def set_setting(self, key: str, value: Any) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?,?)", (key, json.dumps(value)))
