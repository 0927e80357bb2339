"""Canary analysis: the gateway's observations over a step's window, judged by the rollout's gates.

The canary is the step's shards serving the patch; base is the rollout's other shards serving
their previous versions. Each gate compares one number between the two and needs `min_samples` on
both sides; a gate without enough samples is inconclusive, never a pass. The reconciler calls
`step()` on every pass while a rollout is ANALYZING and acts on the decision.

Observations live in memory (a bounded ring); a control plane that restarts during a window starts
that window again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass

from factpatch.server.state.db import Database, Rollout

METRICS = ("stale_value_rate", "error_rate", "latency_p50", "latency_p99")
DEFAULT_WINDOW_S = 60
RUNNING, PASS, FAIL, INCONCLUSIVE = "RUNNING", "PASS", "FAIL", "INCONCLUSIVE"

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_analysis (
  rollout_id TEXT PRIMARY KEY, window_s REAL NOT NULL, runs TEXT NOT NULL DEFAULT '[]');
"""


@dataclass(frozen=True, slots=True)
class Observation:
    t: float
    version: str  # "" = base weights
    shard: str
    error: bool
    latency_s: float
    matched: frozenset[str]  # monitor names that matched (among those that evaluated it)
    mentioned: frozenset[str]  # scoped subjects (lower-cased) the prompt mentions


class Observations:
    def __init__(self, maxlen: int = 500_000):
        self._ring: deque[Observation] = deque(maxlen=maxlen)

    def add(self, o: Observation) -> None:
        self._ring.append(o)  # deque.append is atomic: the gateway thread writes, the reconciler reads

    def since(self, t0: float) -> list[Observation]:
        out = []
        for o in reversed(tuple(self._ring)):
            if o.t < t0:
                break
            out.append(o)
        return out


# persistence of the analysis runs, beside the rollout

def ensure_schema(db: Database) -> None:
    with db.tx() as c:
        c.execute(SCHEMA)


def set_window(c, rollout_id: str, window_s: float) -> None:
    c.execute("INSERT OR REPLACE INTO rollout_analysis (rollout_id, window_s, runs) VALUES (?,?,'[]')", (rollout_id, window_s))


def load(db: Database, rollout_id: str) -> tuple[float, list[dict]]:
    rows = db.q("SELECT window_s, runs FROM rollout_analysis WHERE rollout_id=?", (rollout_id,))
    if not rows:
        return DEFAULT_WINDOW_S, []
    return rows[0]["window_s"], json.loads(rows[0]["runs"])


def save_runs(c, rollout_id: str, window_s: float, runs: list[dict]) -> None:
    c.execute("INSERT INTO rollout_analysis (rollout_id, window_s, runs) VALUES (?,?,?) "
              "ON CONFLICT(rollout_id) DO UPDATE SET runs=excluded.runs", (rollout_id, window_s, json.dumps(runs)))


# the numbers

def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def measure(metric: str, obs: list[Observation], stale_scopes: dict[str, str]) -> tuple[float, int]:
    """(value, samples) of one metric over some observations."""
    if metric == "error_rate":
        return (sum(o.error for o in obs) / len(obs) if obs else 0.0), len(obs)
    if metric.startswith("latency_"):
        lat = [o.latency_s for o in obs if not o.error]
        return _quantile(lat, 0.5 if metric == "latency_p50" else 0.99), len(lat)
    if metric == "stale_value_rate":
        # a response counts when one of the patch's stale-value monitors looked at it
        evaluated = matched = 0
        for o in obs:
            if o.error or not any(scope == "" or scope in o.mentioned for scope in stale_scopes.values()):
                continue
            evaluated += 1
            matched += any(name in o.matched for name in stale_scopes)
        return (matched / evaluated if evaluated else 0.0), evaluated
    raise ValueError(f"unknown analysis metric {metric!r}")


def judge(gate: dict, canary: tuple[float, int], base: tuple[float, int]) -> dict:
    need = max(1, int(gate.get("min_samples") or 0))
    (cv, cn), (bv, bn) = canary, base
    out = {"gate": gate, "canary_value": cv, "base_value": bv, "canary_samples": cn, "base_samples": bn}
    if cn < need or bn < need:
        return {**out, "outcome": INCONCLUSIVE,
                "detail": f"{cn} canary and {bn} base samples; {need} needed on each side"}
    limit = float(gate.get("max_ratio") or 0.0) * bv
    max_value = float(gate.get("max_value") or 0.0)
    ok = cv <= limit + 1e-12 or (max_value > 0 and cv <= max_value)
    rel = "<=" if ok else ">"
    detail = f"canary {cv:.4g} {rel} {gate.get('max_ratio')} x base {bv:.4g}"
    if max_value > 0:
        detail += f" (or <= {max_value:.4g})"
    return {**out, "outcome": PASS if ok else FAIL, "detail": detail}


class Analyzer:
    """Runs and records canary analysis; the reconciler owns the state transitions."""

    def __init__(self, db: Database, observations: Observations | None, stale_scopes=None, metrics=None):
        self.db = db
        self.observations = observations
        # patch digest -> {monitor name: scope key ("" = every prompt)}
        self.stale_scopes = stale_scopes or (lambda digest: {})
        self.metrics = metrics
        self._lock = threading.Lock()
        ensure_schema(db)

    @staticmethod
    def sides(r: Rollout) -> tuple[set[str], set[str], list[str]]:
        step = set(r.steps[r.current_step]["shards"])
        others = [rs for rs in r.shards if rs.shard not in step]
        return step, {rs.shard for rs in others}, sorted({rs.previous_version or "" for rs in others})

    def begin(self, c, r: Rollout) -> None:
        """The step converged: open its window (inside the reconciler's transaction)."""
        window_s, runs = load(self.db, r.id)
        _, _, base_versions = self.sides(r)
        now = time.time()
        runs.append({"step": r.current_step, "decision": RUNNING, "window_start": now, "window_end": now + window_s,
                     "canary_version": r.patch, "base_versions": base_versions, "gates": [], "message": ""})
        save_runs(c, r.id, window_s, runs)

    def step(self, r: Rollout) -> tuple[str, dict]:
        """Evaluates the open window; returns the decision (RUNNING while it may still change) and the run."""
        window_s, runs = load(self.db, r.id)
        if not runs or runs[-1]["decision"] != RUNNING:
            # state says ANALYZING but no open run (written by an older server): open one now
            with self.db.tx() as c:
                self.begin(c, r)
            window_s, runs = load(self.db, r.id)
        run = runs[-1]
        now = time.time()
        canary_shards, base_shards, base_versions = self.sides(r)
        obs = self.observations.since(run["window_start"]) if self.observations else []
        canary = [o for o in obs if o.shard in canary_shards and o.version == r.patch]
        base = [o for o in obs if o.shard in base_shards and o.version in base_versions]
        scopes = self.stale_scopes(r.patch)
        results = []
        for g in r.gates:
            results.append(judge(g, measure(g["metric"], canary, scopes), measure(g["metric"], base, scopes)))
        failed = [x for x in results if x["outcome"] == FAIL]
        if failed:
            decision = FAIL
            message = "; ".join(f"{x['gate']['metric']}: {x['detail']}" for x in failed)
        elif now < run["window_end"]:
            decision, message = RUNNING, f"window open until {time.strftime('%H:%M:%S', time.localtime(run['window_end']))}"
        elif all(x["outcome"] == PASS for x in results):
            decision, message = PASS, "every gate passed"
        else:
            decision = INCONCLUSIVE
            short = [f"{x['gate']['metric']}: {x['detail']}" for x in results if x["outcome"] != PASS]
            message = "not enough data: " + "; ".join(short)
        if not base_shards:
            decision, message = INCONCLUSIVE, "no base shards left to compare the canary with"
        run.update(decision=decision, gates=results, message=message, base_versions=base_versions,
                   evaluated_at=now, canary_requests=len(canary), base_requests=len(base))
        with self.db.tx() as c:
            save_runs(c, r.id, window_s, runs)
        if decision != RUNNING and self.metrics is not None:
            self.metrics.analysis_decisions.labels(decision).inc()
        return decision, run
