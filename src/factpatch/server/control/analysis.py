"""Canary analysis: the gateway's observations over a step's window, judged by the rollout's gates.

The canary is the step's shards serving the patch; base is the rollout's other shards serving
their previous versions. Each gate compares one number between the two and needs `min_samples` on
both sides; a gate without enough samples is inconclusive, never a pass. The reconciler calls
`step()` on every pass while a rollout is ANALYZING and acts on the decision.

A window is cut into measurements (Argo Rollouts' shape): each judges the gates on its own requests,
and the policy's limits decide how many failed or inconclusive measurements a window tolerates. The
last step can be watched after promotion (`post_promotion_s`): there is no base left to compare with,
so its gates use the base numbers the earlier steps measured.

Observations live in memory (a bounded ring); a control plane that restarts during a window starts
that window again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from factpatch.server.control.prometheus_gate import PROMETHEUS, PrometheusQueries, fill
from factpatch.server.state.db import Database, Rollout

METRICS = ("stale_value_rate", "error_rate", "latency_p50", "latency_p99", "ttft_p50", "ttft_p99", PROMETHEUS)
DEFAULT_WINDOW_S = 60
RUNNING, PASS, FAIL, INCONCLUSIVE = "RUNNING", "PASS", "FAIL", "INCONCLUSIVE"

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_analysis (
  rollout_id TEXT PRIMARY KEY, window_s REAL NOT NULL, runs TEXT NOT NULL DEFAULT '[]',
  policy TEXT NOT NULL DEFAULT '{}');
"""


@dataclass(frozen=True)
class Policy:
    failure_limit: int = 0  # failed measurements tolerated; one more fails the analysis
    inconclusive_limit: int = 0  # inconclusive measurements tolerated at the end of a window
    measurement_s: float = 0.0  # length of one measurement; 0 = the whole window
    post_promotion_s: float = 0.0  # watch of the last step after it converged; 0 = none

    @classmethod
    def from_json(cls, data: dict) -> "Policy":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Observation:
    t: float
    version: str  # "" = base weights
    shard: str
    error: bool
    latency_s: float
    matched: frozenset[str]  # monitor names that matched (among those that evaluated it)
    mentioned: frozenset[str]  # scoped subjects (lower-cased) the prompt mentions
    ttft: float | None = None  # streamed requests: seconds to the first text chunk


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
        columns = {r["name"] for r in c.execute("PRAGMA table_info(rollout_analysis)")}
        if "policy" not in columns:  # a state directory from before the policy
            c.execute("ALTER TABLE rollout_analysis ADD COLUMN policy TEXT NOT NULL DEFAULT '{}'")


def set_window(c, rollout_id: str, window_s: float, policy: Policy = Policy()) -> None:
    c.execute("INSERT OR REPLACE INTO rollout_analysis (rollout_id, window_s, runs, policy) VALUES (?,?,'[]',?)",
              (rollout_id, window_s, json.dumps(asdict(policy))))


def load(db: Database, rollout_id: str) -> tuple[float, list[dict]]:
    rows = db.q("SELECT window_s, runs FROM rollout_analysis WHERE rollout_id=?", (rollout_id,))
    if not rows:
        return DEFAULT_WINDOW_S, []
    return rows[0]["window_s"], json.loads(rows[0]["runs"])


def load_policy(db: Database, rollout_id: str) -> Policy:
    rows = db.q("SELECT policy FROM rollout_analysis WHERE rollout_id=?", (rollout_id,))
    return Policy.from_json(json.loads(rows[0]["policy"])) if rows else Policy()


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
    if metric.startswith("ttft_"):  # streams only: free of the answer's length
        ttft = [o.ttft for o in obs if not o.error and o.ttft is not None]
        return _quantile(ttft, 0.5 if metric == "ttft_p50" else 0.99), len(ttft)
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


def judge(gate: dict, canary: tuple[float, int], base: tuple[float, int] | None) -> dict:
    """One gate. `base` None: no base was ever measured (the watch after a one-step rollout), so only
    the gate's `max_value` can pass the canary, and nothing can fail it."""
    need = max(1, int(gate.get("min_samples") or 0))
    max_value = float(gate.get("max_value") or 0.0)
    (cv, cn), (bv, bn) = canary, base or (0.0, 0)
    out = {"gate": gate, "canary_value": cv, "base_value": bv, "canary_samples": cn, "base_samples": bn}
    if base is None and cn >= need:
        if max_value > 0 and cv <= max_value:
            return {**out, "outcome": PASS, "detail": f"canary {cv:.4g} <= {max_value:.4g} (no base measured)"}
        return {**out, "outcome": INCONCLUSIVE, "detail": "no base measured to compare with, and no max_value it meets"}
    if cn < need or bn < need:
        return {**out, "outcome": INCONCLUSIVE,
                "detail": f"{cn} canary and {bn} base samples; {need} needed on each side"}
    limit = float(gate.get("max_ratio") or 0.0) * bv
    ok = cv <= limit + 1e-12 or (max_value > 0 and cv <= max_value)
    rel = "<=" if ok else ">"
    detail = f"canary {cv:.4g} {rel} {gate.get('max_ratio')} x base {bv:.4g}"
    if max_value > 0:
        detail += f" (or <= {max_value:.4g})"
    return {**out, "outcome": PASS if ok else FAIL, "detail": detail}


class Analyzer:
    """Runs and records canary analysis; the reconciler owns the state transitions."""

    def __init__(self, db: Database, observations: Observations | None, stale_scopes=None, metrics=None,
                 prometheus: PrometheusQueries | None = None):
        self.db = db
        self.prometheus = prometheus  # answers the gates of metric "prometheus"
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

    def begin(self, c, r: Rollout, post_promotion: bool = False) -> None:
        """The step converged: open its window (inside the reconciler's transaction)."""
        window_s, runs = load(self.db, r.id)
        if post_promotion:
            window_s = load_policy(self.db, r.id).post_promotion_s
        _, _, base_versions = self.sides(r)
        now = time.time()
        runs.append({"step": r.current_step, "decision": RUNNING, "window_start": now, "window_end": now + window_s,
                     "canary_version": r.patch, "base_versions": base_versions, "gates": [], "message": "",
                     "measurements": [], "post_promotion": post_promotion})
        save_runs(c, r.id, window_s, runs)

    def watches_after_promotion(self, r: Rollout) -> bool:
        return load_policy(self.db, r.id).post_promotion_s > 0

    @staticmethod
    def recorded_base(runs: list[dict], gate_index: int) -> tuple[float, int] | None:
        """The newest base numbers an earlier step measured for a gate (with enough samples)."""
        for run in reversed(runs):
            for m in reversed(run.get("measurements") or [{"gates": run.get("gates") or []}]):
                gates = m.get("gates") or []
                if gate_index < len(gates):
                    g = gates[gate_index]
                    if g["base_samples"] >= max(1, int(g["gate"].get("min_samples") or 0)):
                        return g["base_value"], g["base_samples"]
        return None

    def _measure(self, r: Rollout, run: dict, earlier: list[dict], t0: float, t1: float, canary_shards, base_shards,
                 base_versions, final: bool = False):
        # (t0, t1]: a measurement that follows a failure starts at that failure's time, whose requests
        # were counted already
        obs = [o for o in self.observations.since(t0) if t0 < o.t <= t1] if self.observations else []
        canary = [o for o in obs if o.shard in canary_shards and o.version == r.patch]
        base = [o for o in obs if o.shard in base_shards and o.version in base_versions]
        scopes = self.stale_scopes(r.patch)
        results = []
        for i, g in enumerate(r.gates):
            if g["metric"] == PROMETHEUS:
                results.append(self._ask_prometheus(g, i, r, run, earlier, t0, t1, final, canary_shards, base_shards,
                                                    base_versions))
                continue
            theirs = self.recorded_base(earlier, i) if run.get("post_promotion") else measure(g["metric"], base, scopes)
            results.append(judge(g, measure(g["metric"], canary, scopes), theirs))
        return results, len(canary), len(base)

    def _ask_prometheus(self, g: dict, i: int, r: Rollout, run: dict, earlier: list[dict], t0: float, t1: float,
                        final: bool, canary_shards, base_shards, base_versions) -> dict:
        """A Prometheus gate is asked once, when its measurement ends: over a shorter window the rate
        of a few seconds' scrapes would decide."""
        blank = {"gate": g, "canary_value": 0.0, "base_value": 0.0, "canary_samples": 0, "base_samples": 0}
        if not final:
            return {**blank, "outcome": INCONCLUSIVE, "detail": "asked when the measurement ends"}
        if self.prometheus is None:
            return {**blank, "outcome": INCONCLUSIVE, "detail": "no Prometheus configured (serve --prometheus-url)"}
        window = t1 - t0
        cv, canary_why = self.prometheus.value(fill(g["query"], [r.patch], canary_shards, window), t1)
        if cv is None:
            return {**blank, "outcome": INCONCLUSIVE, "detail": f"canary: {canary_why}"}
        if run.get("post_promotion"):
            theirs = self.recorded_base(earlier, i)
        else:
            bv, base_why = self.prometheus.value(fill(g["query"], base_versions, base_shards, window), t1)
            if bv is None:
                return {**blank, "canary_value": cv, "canary_samples": 1, "outcome": INCONCLUSIVE,
                        "detail": f"base: {base_why}"}
            theirs = (bv, 1)
        return judge({**g, "min_samples": 0}, (cv, 1), theirs)

    def step(self, r: Rollout) -> tuple[str, dict]:
        """Evaluates the open window; returns the decision (RUNNING while it may still change) and the run."""
        window_s, runs = load(self.db, r.id)
        if not runs or runs[-1]["decision"] != RUNNING:
            # state says ANALYZING but no open run (written by an older server): open one now
            with self.db.tx() as c:
                self.begin(c, r, post_promotion=r.current_step == len(r.steps) - 1)
            window_s, runs = load(self.db, r.id)
        policy = load_policy(self.db, r.id)
        run, earlier = runs[-1], runs[:-1]
        ms = run.setdefault("measurements", [])
        now = time.time()
        if not ms or ms[-1]["decision"] != RUNNING:
            start = ms[-1]["end"] if ms else run["window_start"]
            length = policy.measurement_s or (run["window_end"] - run["window_start"])
            ms.append({"start": start, "end": min(start + length, run["window_end"]), "decision": RUNNING, "gates": []})
        cur = ms[-1]
        canary_shards, base_shards, base_versions = self.sides(r)
        results, n_canary, n_base = self._measure(r, run, earlier, cur["start"], cur["end"], canary_shards, base_shards,
                                                    base_versions, final=now >= cur["end"])
        failed = [x for x in results if x["outcome"] == FAIL]
        if failed:
            cur.update(decision=FAIL, end=now)  # a failure ends its measurement at once
        elif now >= cur["end"]:
            cur["decision"] = PASS if all(x["outcome"] == PASS for x in results) else INCONCLUSIVE
        cur["gates"] = results
        n_failed = sum(m["decision"] == FAIL for m in ms)
        n_inconclusive = sum(m["decision"] == INCONCLUSIVE for m in ms)
        n_passed = sum(m["decision"] == PASS for m in ms)
        closed = cur["decision"] != RUNNING
        if n_failed > policy.failure_limit:
            decision = FAIL
            message = "; ".join(f"{x['gate']['metric']}: {x['detail']}" for x in failed)
            if policy.failure_limit:
                message = f"{n_failed} failed measurements (limit {policy.failure_limit}); last: {message}"
        elif not closed or now < run["window_end"]:
            decision = RUNNING
            message = f"window open until {time.strftime('%H:%M:%S', time.localtime(run['window_end']))}"
            if n_failed:
                message += f"; {n_failed} failed measurement(s) of {policy.failure_limit} tolerated"
        elif n_inconclusive > policy.inconclusive_limit or not n_passed:
            decision = INCONCLUSIVE
            short = [f"{x['gate']['metric']}: {x['detail']}" for x in results if x["outcome"] != PASS]
            message = "not enough data: " + ("; ".join(short) or f"{n_inconclusive} inconclusive measurements "
                                              f"(limit {policy.inconclusive_limit})")
        else:
            decision, message = PASS, "every gate passed" if len(ms) == 1 else f"{n_passed} of {len(ms)} measurements passed"
        if not base_shards and not run.get("post_promotion"):
            decision, message = INCONCLUSIVE, "no base shards left to compare the canary with"
        run.update(decision=decision, gates=results, message=message, base_versions=base_versions,
                   evaluated_at=now, canary_requests=n_canary, base_requests=n_base)
        with self.db.tx() as c:
            save_runs(c, r.id, window_s, runs)
        if decision != RUNNING and self.metrics is not None:
            self.metrics.analysis_decisions.labels(decision).inc()
        return decision, run
