"""The prober: runs probe sets on shards, on a schedule and on demand, and derives the conditions.

A run on one shard: check the shard is steady (not swapping, at its desired version, reachable),
read its version from the agent, ask the questions on its OpenAI port, read the version again. A
version change in between discards the run (FAILED): results always belong to one version.

Capacity bound: after a run that kept a shard busy for d seconds, the next scheduled run on it waits
until d·(1/max_busy_share − 1) seconds have passed, so probes never take more than that share of the
shard's time. On-demand runs (RunProbes) are not held back, but their time counts the same way.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from factpatch.server.control.agent_client import AgentError
from factpatch.server.state.db import Database

from .config import ProbeConfig, Schedule
from .sets import EDIT, PARAPHRASE, REGRESSION, Question, answer_matches, edit_questions, sample
from .shard_client import ProbeTransportError, ShardCompletions
from .weight_change import PatchSizes

log = logging.getLogger("factpatch.probes")

OK, SKIPPED_SWAPPING, SKIPPED_UNREACHABLE, SKIPPED_BUDGET, FAILED = (
    "OK", "SKIPPED_SWAPPING", "SKIPPED_UNREACHABLE", "SKIPPED_BUDGET", "FAILED")
EDIT_NOT_HOLDING, REGRESSION_DRIFT, RETRAIN_DUE = "EDIT_NOT_HOLDING", "REGRESSION_DRIFT", "RETRAIN_DUE"
MAX_MISSES = 20
SCHEDULE_KEY = "probe_schedule"


@dataclass
class ProbeResult:
    shard: str
    version: str | None
    outcome: str
    detail: str = ""
    asked: dict[str, int] = field(default_factory=lambda: {EDIT: 0, PARAPHRASE: 0, REGRESSION: 0})
    hits: dict[str, int] = field(default_factory=lambda: {EDIT: 0, PARAPHRASE: 0, REGRESSION: 0})
    duration: float = 0.0
    finished: float = field(default_factory=time.time)
    misses: list[tuple[str, str, str, str]] = field(default_factory=list)  # (kind, prompt, expected, got)

    def ratio(self, kind: str) -> float | None:
        return self.hits[kind] / self.asked[kind] if self.asked[kind] else None


@dataclass
class Condition:
    type: str
    shard: str
    version: str | None
    value: float
    threshold: float
    message: str
    since: float


class Prober:
    def __init__(self, db: Database, cfg: ProbeConfig, sizes: PatchSizes, agent: Callable[[str, str], object],
                 *, swaps=None, on_result: Callable[[ProbeResult], None] | None = None, seed: int = 0):
        self.db = db
        self.cfg = cfg
        self.sizes = sizes
        self.agent = agent  # (name, address) -> AgentClient
        self.swaps = swaps
        self.on_result = on_result
        self.rng = random.Random(seed)
        saved = db.setting(SCHEDULE_KEY)
        self.schedule = Schedule.model_validate(saved) if saved else cfg.schedule
        self.regression = [Question(REGRESSION, r.prompt, r.expect) for r in cfg.regression]
        self.latest: dict[str, ProbeResult] = {}
        self.conditions: dict[tuple[str, str], Condition] = {}
        self._next_allowed: dict[str, float] = {}
        self._last_start: dict[str, float] = {}
        self._shard_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prober")

    # schedule

    def set_schedule(self, s: Schedule) -> None:
        self.db.set_setting(SCHEDULE_KEY, s.model_dump())
        self.schedule = s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            interval = self.schedule.interval_seconds
            if interval <= 0:
                continue
            now = time.time()
            for s in self.db.shards():
                if now - self._last_start.get(s.name, 0.0) < interval or self._shard_locks[s.name].locked():
                    continue
                self._last_start[s.name] = now
                self._pool.submit(self._scheduled, s.name)

    def _scheduled(self, name: str) -> None:
        try:
            if time.time() < self._next_allowed.get(name, 0.0):
                self._record(ProbeResult(name, None, SKIPPED_BUDGET, "waiting for the shard's probe budget"))
                return
            self.run_shard(name)
        except Exception:  # the loop must outlive any one shard's trouble
            log.exception("probe run on %s failed", name)

    # runs

    def run(self, names: list[str] | None = None) -> list[ProbeResult]:
        names = names or [s.name for s in self.db.shards()]
        return list(self._pool.map(self.run_shard, names))

    def run_shard(self, name: str) -> ProbeResult:
        with self._shard_locks[name]:
            result = self._probe(name)
        self._record(result)
        return result

    def _record(self, result: ProbeResult) -> None:
        if result.outcome == OK:
            with self._lock:
                self.latest[result.shard] = result
        elif result.outcome in (SKIPPED_SWAPPING, SKIPPED_UNREACHABLE):
            with self._lock:  # a shard changing or gone has no current result
                self.latest.pop(result.shard, None)
        self.refresh_conditions()
        if self.on_result:
            self.on_result(result)

    def _steady(self, shard) -> tuple[str | None, str | None]:
        """(version, None) when the shard can be probed now, else (None, skip outcome)."""
        if self.swaps is not None and self.swaps.swapping(shard.name):
            return None, SKIPPED_SWAPPING
        try:
            st = self.agent(shard.name, shard.agent_address).status(timeout=5.0)
        except AgentError as e:
            return None, SKIPPED_UNREACHABLE if e.reason == "UNREACHABLE" else FAILED
        if st.swapping or (st.active_version or None) != (shard.desired_version or None):
            return None, SKIPPED_SWAPPING
        return st.active_version or "", None

    def _questions(self, version: str) -> list[Question]:
        edits: list[Question] = []
        paraphrases: list[Question] = []
        if version:
            row = self.db.patch(version)
            if row is not None:
                edits, paraphrases = edit_questions(json.loads(row["manifest"]), self.db.probe_set(version))
        return sample(edits, paraphrases, self.regression, self.schedule.sample_size, self.rng)

    def _probe(self, name: str) -> ProbeResult:
        shard = self.db.shard(name)
        if shard is None:
            return ProbeResult(name, None, FAILED, "the shard is no longer registered")
        version, skip = self._steady(shard)
        if skip:
            return ProbeResult(name, None, skip, f"shard {name} is {skip.lower().removeprefix('skipped_')}")
        questions = self._questions(version)
        t0 = time.perf_counter()
        client = ShardCompletions(shard.address, max_tokens=self.cfg.max_tokens)
        try:
            answers = client.complete([q.prompt for q in questions], self.schedule.concurrency)
        except ProbeTransportError as e:
            return ProbeResult(name, version or None, FAILED, str(e))
        finally:
            client.close()
            self._charge(name, time.perf_counter() - t0)
        after, skip = self._steady(self.db.shard(name) or shard)
        if skip or after != version:
            return ProbeResult(name, version or None, FAILED, "the shard changed version during the run; results discarded")
        r = ProbeResult(name, version or None, OK, duration=time.perf_counter() - t0)
        for q, a in zip(questions, answers):
            r.asked[q.kind] += 1
            if answer_matches(a, q.expect):
                r.hits[q.kind] += 1
            elif len(r.misses) < MAX_MISSES:
                r.misses.append((q.kind, q.prompt, q.expect, a.strip()))
        return r

    def _charge(self, name: str, busy: float) -> None:
        share = self.schedule.max_busy_share
        self._next_allowed[name] = time.time() + busy * (1.0 / share - 1.0)

    # policy

    def refresh_conditions(self) -> None:
        th = self.cfg.thresholds
        found: dict[tuple[str, str], tuple[str | None, float, float, str]] = {}
        with self._lock:
            latest = dict(self.latest)
        for name, r in latest.items():
            eff = r.ratio(EDIT)
            if r.version and eff is not None and eff < th.min_probe_efficacy:
                found[(EDIT_NOT_HOLDING, name)] = (r.version, eff, th.min_probe_efficacy,
                                                   f"{r.hits[EDIT]}/{r.asked[EDIT]} edit prompts answer the new value on {name}")
            agree = r.ratio(REGRESSION)
            if agree is not None and 1.0 - agree > th.max_regression_drift:
                found[(REGRESSION_DRIFT, name)] = (r.version, 1.0 - agree, th.max_regression_drift,
                                                   f"{r.asked[REGRESSION] - r.hits[REGRESSION]}/{r.asked[REGRESSION]} "
                                                   f"regression prompts no longer give the base's answer on {name}")
        for shard, version, size in self.active_patches():
            if size.edits >= th.max_cumulative_edits:
                found[(RETRAIN_DUE, shard)] = (version, float(size.edits), float(th.max_cumulative_edits),
                                              f"the active patch carries {size.edits} edits")
            elif size.relative_max is not None and size.relative_max > th.max_relative_weight_change:
                found[(RETRAIN_DUE, shard)] = (version, size.relative_max, th.max_relative_weight_change,
                                              f"the active patch changes a weight by {size.relative_max:.1%} of its norm")
        now = time.time()
        with self._lock:
            old = self.conditions
            self.conditions = {
                key: Condition(key[0], key[1], v, value, thr, msg,
                               old[key].since if key in old and old[key].version == v else now)
                for key, (v, value, thr, msg) in found.items()
            }
            for key in set(found) - set(old):
                log.warning("condition %s on %s: %s", key[0], key[1], found[key][3])

    def active_patches(self):
        """(shard, version, PatchSize) for every shard that reports serving a stored patch."""
        for s in self.db.shards():
            version = (s.observed or {}).get("active_version") or None
            row = self.db.patch(version) if version else None
            if row is not None:
                yield s.name, version, self.sizes.get(version, json.loads(row["manifest"]),
                                                      (s.observed or {}).get("base_fingerprint", ""))

    def snapshot(self) -> tuple[list[ProbeResult], list[Condition]]:
        with self._lock:
            return list(self.latest.values()), list(self.conditions.values())
