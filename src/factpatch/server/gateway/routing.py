"""Which shard serves a request: the current rollout's split, sticky keys, QA overrides, swaps.

A routing table is rebuilt from the state database whenever it changes. Each unfinished rollout
(PROGRESSING, ANALYZING or PAUSED) has a split: its canary (its shards serving its patch) gets the
current step's share of all traffic; what no canary takes goes to base (every shard that is no
rollout's canary). Rollouts run side by side on disjoint shard sets, each with its own share, taken
oldest first; shares that add up to more than everything are scaled down together. A sticky key
hashes, salted with each rollout's id, to a point in [0, 1): the same key keeps its side of every
split while those rollouts run.

A shard gets no traffic while it is not healthy, while its desired version differs from what it
serves (a swap is due), or while the reconciler is swapping it: the reconciler marks the swap
before calling the shard, and the mark holds until a table built after the swap is in place.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from factpatch.server.state.db import Database
from factpatch.server.state.rollout_state import TRAFFIC_SPLIT

CANARY, BASE = "canary", "base"


@dataclass(frozen=True)
class ShardView:
    name: str
    url: str
    version: str  # "" = base weights
    desired: str
    healthy: bool
    available: bool


@dataclass(frozen=True)
class Split:
    rollout_id: str
    patch: str
    canary: tuple[str, ...]
    canary_share: float


@dataclass(frozen=True)
class Table:
    generation: int
    shards: dict[str, ShardView] = field(default_factory=dict)
    splits: tuple[Split, ...] = ()  # oldest rollout first
    base: tuple[str, ...] = ()  # with splits: the shards that are no rollout's canary

    @property
    def split(self) -> Split | None:
        """The oldest running rollout's split (the only one in most fleets)."""
        return self.splits[0] if self.splits else None

    def split_of(self, rollout_id: str) -> Split | None:
        return next((s for s in self.splits if s.rollout_id == rollout_id), None)


class SwapTracker:
    """Shards the reconciler is changing now, and the gateway's requests in flight per shard.

    The gateway takes a slot (`enter`) before sending a request to a shard and gives it back when the
    response has ended; the reconciler, having marked a shard as swapping (`begin`), waits for its
    slots to drain before it changes the weights. Both happen under one lock, so a request either
    got its slot before the swap began (and finishes on the old weights, which its version header
    names) or is kept off the shard: a response is never tagged with a version it was not made by.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._busy: dict[str, int] = {}  # shard -> 0 while swapping, else the db generation after the swap
        self.inflight: dict[str, int] = {}
        # Each swap's mark (a counter): gateways in other processes acknowledge the mark once they
        # route nothing more to the shard and have nothing in flight there.
        self.marks: dict[str, int] = {}
        self._mark = 0
        self.version = 0  # counts begin() and end(): what a routing snapshot reads of this changed
        self.remote = None  # RemoteGateways (control/gateway_fleet.py): drains wait for them too
        self.on_change: Callable[[], None] | None = None  # a swap began or ended (wakes routing watchers)
        self.on_idle: Callable[[], None] | None = None  # the last request left a shard being swapped

    def begin(self, shard: str) -> None:
        with self._lock:
            self._busy[shard] = 0
            self._mark += 1
            self.marks[shard] = self._mark
            self.version += 1
        if self.on_change:
            self.on_change()

    def drain(self, shard: str, timeout: float) -> bool:
        """Waits until no gateway request is in flight on the shard, here or in a gateway process that
        watches the routing state; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._drained:
            if not self._drained.wait_for(lambda: self.inflight.get(shard, 0) == 0, timeout):
                return False
            mark = self.marks.get(shard, 0)
        if self.remote is None:
            return True
        return self.remote.drain(shard, mark, max(0.0, deadline - time.monotonic()))

    def end(self, shard: str, generation: int) -> None:
        with self._lock:
            self._busy[shard] = generation
            self.version += 1
        if self.on_change:
            self.on_change()

    def enter(self, shard: str) -> bool:
        with self._lock:
            if self._busy.get(shard) == 0:
                return False
            self.inflight[shard] = self.inflight.get(shard, 0) + 1
            return True

    def leave(self, shard: str) -> None:
        with self._drained:
            self.inflight[shard] -= 1
            idle = self.inflight[shard] == 0
            if idle:
                self._drained.notify_all()
        if idle and self.on_idle is not None and self.swapping(shard):
            self.on_idle()

    def follow(self, marks: dict[str, int]) -> None:
        """In a gateway process: the shards the control plane is swapping now (shard -> swap mark);
        every other shard is free again."""
        with self._lock:
            self._busy = {shard: 0 for shard in marks}
            self.marks = dict(marks)

    def acknowledged(self) -> dict[str, int]:
        """The swap marks this gateway can acknowledge: shards it no longer routes to and has no
        request in flight on."""
        with self._lock:
            return {s: m for s, m in self.marks.items() if self._busy.get(s) == 0 and self.inflight.get(s, 0) == 0}

    def swapping(self, shard: str) -> bool:
        """True while the reconciler is inside a swap of this shard."""
        with self._lock:
            return self._busy.get(shard) == 0

    def mark_of(self, shard: str) -> int | None:
        """The mark of the swap in progress on this shard, None when none is."""
        with self._lock:
            return self.marks.get(shard) if self._busy.get(shard) == 0 else None

    @staticmethod
    def _blocks(g: int | None, table_generation: int) -> bool:
        """Mid-swap (0), or swapped at generation g and the table is older than that."""
        return g is not None and not (g and table_generation >= g)

    def blocked_at(self, shard: str, table_generation: int) -> bool:
        """Whether a table of this generation must still keep off the shard (blocked(), changing nothing)."""
        with self._lock:
            return self._blocks(self._busy.get(shard), table_generation)

    def blocked(self, shard: str, table_generation: int) -> bool:
        g = self._busy.get(shard)
        if g is None:
            return False
        if not self._blocks(g, table_generation):
            with self._lock:
                if self._busy.get(shard) == g:
                    del self._busy[shard]
            return False
        return True


def unit(key: str, salt: str) -> float:
    """A stable point in [0, 1) for a routing key."""
    h = hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(h, "big") / 2.0**64


def build_table(db: Database) -> Table:
    """The routing table the state database describes now."""
    gen = db.generation  # read first: a change during the build makes the next refresh run again
    shards = {}
    for s in db.shards():
        version = str(s.observed.get("active_version") or "")
        healthy = s.health == "SERVING" and not s.observed.get("swapping")
        desired = s.desired_version or ""
        shards[s.name] = ShardView(s.name, s.address.rstrip("/"), version, desired, healthy,
                                   healthy and desired == version)
    running = []
    for r in reversed(db.rollouts(active_only=True)):  # oldest first: a new rollout does not move old keys
        if r.state not in TRAFFIC_SPLIT:
            continue
        targets = [n for n in r.target_shards if n in shards]
        canary = tuple(n for n in targets if shards[n].version == r.patch)
        pct = int(r.steps[r.current_step].get("traffic_percent") or 0)
        running.append((r, canary, pct / 100 if pct else (len(canary) / len(targets) if targets else 0.0)))
    canaries = {n for _, canary, _ in running for n in canary}
    base = tuple(n for n in shards if n not in canaries)
    scale = min(1.0, 1.0 / total) if (total := sum(share for _, _, share in running)) > 0 else 1.0
    splits = tuple(Split(r.id, r.patch, canary, share * scale) for r, canary, share in running)
    return Table(gen, shards, splits, base)


class Router:
    def __init__(self, db: Database | None, swaps: SwapTracker):
        self.db = db
        self.swaps = swaps
        self.table = Table(generation=-1)
        self._rng = random.Random()

    def changing(self) -> bool:
        """True while some shard is being moved to another version (desired ≠ served, or mid-swap):
        a request with nowhere to go now will have somewhere shortly."""
        t = self.table
        return any(v.desired != v.version or self.swaps.blocked(n, t.generation) for n, v in t.shards.items())

    def refresh(self) -> Table:
        self.table = build_table(self.db)
        return self.table

    def install(self, table: Table) -> None:
        """Routes by a table built elsewhere (in a gateway process: the control plane's snapshot)."""
        self.table = table

    def available(self, t: Table, names) -> list[ShardView]:
        return [t.shards[n] for n in names if t.shards[n].available and not self.swaps.blocked(n, t.generation)]

    def _draw(self, t: Table, key: str | None) -> Split | None:
        """The split whose canary takes this request, or None for base. Each split in turn takes its
        share of what the ones before it left, so every canary gets its share of all traffic."""
        left = 1.0
        for s in t.splits:
            if left <= 0:
                break
            u = unit(key, s.rollout_id) if key else self._rng.random()
            if u < s.canary_share / left:
                return s
            left -= s.canary_share
        return None

    def choose(self, key: str | None, force: str | None) -> tuple[str, list[ShardView]]:
        """(route, candidate shards) for a request; no candidates means no shard can take it. A forced
        canary goes to any running rollout's canary."""
        t = self.table
        if not t.splits:
            if force == CANARY:
                return CANARY, []
            return BASE, self.available(t, t.shards)
        every_canary = [n for s in t.splits for n in s.canary]
        if force:
            route, drawn = force, None
        else:
            drawn = self._draw(t, key)
            route = CANARY if drawn is not None else BASE
        canary = drawn.canary if drawn is not None else every_canary
        cands = self.available(t, canary if route == CANARY else t.base)
        if not cands and not force:  # the other version rather than no answer (e.g. the only canary is swapping)
            route = BASE if route == CANARY else CANARY
            cands = self.available(t, canary if route == CANARY else t.base)
        return route, cands

    @property
    def inflight(self) -> dict[str, int]:
        return self.swaps.inflight

    def pick(self, cands: list[ShardView]) -> ShardView:
        """The least busy candidate, ties broken at random."""
        low = min(self.inflight.get(c.name, 0) for c in cands)
        return self._rng.choice([c for c in cands if self.inflight.get(c.name, 0) == low])

    def shards(self) -> list[ShardView]:
        t = self.table
        return [ShardView(v.name, v.url, v.version, v.desired, v.healthy,
                          v.available and not self.swaps.blocked(v.name, t.generation)) for v in t.shards.values()]
