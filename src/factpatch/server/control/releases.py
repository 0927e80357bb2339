"""Release history: the versions each shard was released on, and what Rollback goes back to.

A release is a version a shard was meant to stay on: every target shard of a rollout that succeeded,
every shard a RevertToBase named, every shard a Rollback moved. A canary that never got past its step is
not a release, so going back never lands on a version that was only ever tried.

    record(db, c, "s0", digest, "rollout ro-1", "alice", before=None)   # inside the caller's transaction
    plan = rollback_plan(db, ["s0", "s1"], to_version="")              # {shard: Move(to, left)}

The first release recorded for a shard also records what it ran before (`before`), so the first
rollout's rollback has somewhere to go.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from factpatch.server.state.db import Database, Rollout

HISTORY = 20  # releases per shard that Rollback and ListReleases look back over
SYSTEM = "system:releases"
_UNSET = object()


@dataclass(frozen=True)
class Move:
    to: str | None  # the version the shard goes back to (None = base)
    left: str | None  # the version it was asked to run until now
    rollout: str | None = None  # the unfinished rollout this undoes, if any


class RollbackRefused(Exception):
    def __init__(self, reason: str, message: str, shard: str):
        super().__init__(message)
        self.reason, self.message, self.shard = reason, message, shard


def record(db: Database, c: sqlite3.Connection, shard: str, version: str | None, source: str, principal: str,
           *, before: object = _UNSET) -> None:
    """Appends a release; on a shard with no history yet, first `before` (the version it ran until now)."""
    if before is not _UNSET and before != version and not db.releases(shard, 1):
        db.add_release(c, shard, before, f"before {source}", SYSTEM)
    db.add_release(c, shard, version, source, principal)


def rollout_of(shard: str, active: list[Rollout]) -> Rollout | None:
    return next((r for r in active if shard in {rs.shard for rs in r.shards}), None)


def stable_version(db: Database, shard: str, active: list[Rollout]) -> str | None:
    """What the shard runs outside any unfinished rollout: the version that rollout found there."""
    r = rollout_of(shard, active)
    if r is not None:
        return next(rs.previous_version for rs in r.shards if rs.shard == shard)
    s = db.shard(shard)
    return s.desired_version if s else None


def rollback_plan(db: Database, names: list[str], to_version: str = "") -> dict[str, Move]:
    """Where each shard goes back to; refuses (naming the shard) when one has nowhere to go.

    While an unfinished rollout includes the shard, back means the version that rollout found there.
    Otherwise it is the newest release that differs from the shard's current one; `to_version` names
    an older release instead, which must be in the shard's history.
    """
    active = db.rollouts(active_only=True)
    plan: dict[str, Move] = {}
    for name in names:
        left = db.shard(name).desired_version
        history = db.releases(name, HISTORY)
        rollout = rollout_of(name, active)
        if to_version:
            if to_version not in {h.version for h in history}:
                raise RollbackRefused("NOT_IN_HISTORY", f"shard {name} was never released on {to_version} "
                                      f"(its last {len(history)} release(s) are listed by `ctl releases`)", name)
            to = to_version
        elif rollout is not None:
            to = next(rs.previous_version for rs in rollout.shards if rs.shard == name)
        else:
            current = history[0].version if history else left
            earlier = [h.version for h in history if h.version != current]
            if not earlier:
                raise RollbackRefused("NO_PREVIOUS_VERSION",
                                      f"shard {name} has no earlier release than {current or 'base'} to go back to", name)
            to = earlier[0]
        if to is not None and db.patch(to) is None:
            raise RollbackRefused("PATCH_NOT_FOUND", f"shard {name} would go back to {to}, "
                                  "which is no longer in the patch store", name)
        plan[name] = Move(to, left, rollout.id if rollout else None)
    return plan
