"""Canary analysis by measurements: failure and inconclusive limits, and the watch of the last step after
promotion, judged by the analyzer and acted on by the reconciler. Observations are written as the
gateway writes them; the clock is the test's. (tests/gateway/test_analysis.py runs it on real traffic.)"""

from __future__ import annotations

import threading
import time

import pytest

from factpatch.server.control import analysis
from factpatch.server.control.agent_token import AgentToken
from factpatch.server.control.analysis import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    RUNNING,
    Analyzer,
    Observation,
    Observations,
    Policy,
)
from factpatch.server.control.reconciler import Reconciler
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database, Rollout, RolloutShard
from factpatch.server.state.rollout_state import RolloutState
from factpatch.server.state.store import PatchStore

from .helpers import AGENT_TOKEN

P = "sha256:" + "a" * 64
GATE = {"metric": "error_rate", "max_ratio": 1.0, "min_samples": 5, "max_value": 0.0}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(analysis.time, "time", c)
    return c


@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "state.db")
    d.add_patch(P, 1, {}, [], "test")
    for name in ("s0", "s1"):
        d.add_shard(name, "http://127.0.0.1:9")
    analysis.ensure_schema(d)
    yield d
    d.close()


def rollout(db, policy: Policy, window_s: float = 60, step: int = 0) -> Rollout:
    now = time.time()
    r = Rollout("ro-1", P, RolloutState.ANALYZING, [{"shards": ["s0"], "traffic_percent": 50},
                                                    {"shards": ["s0", "s1"], "traffic_percent": 100}],
                step, "e", "", "", [GATE], 300, "alice", now, now, now,
                [RolloutShard("s0", None, P), RolloutShard("s1", None, P if step else None)])
    with db.tx() as c:
        db.insert_rollout(c, r)
        for rs in r.shards:
            db.upsert_rollout_shard(c, r.id, rs)
        analysis.set_window(c, r.id, window_s, policy)
    return r


def traffic(obs: Observations, clock: Clock, *, canary_errors: int, n: int = 5, shards=("s0",), base: bool = True):
    """n requests per side at the clock's time: the canary's first `canary_errors` fail."""
    for i in range(n):
        for s in shards:
            obs.add(Observation(clock.now, P, s, i < canary_errors, 0.1, frozenset(), frozenset()))
        if base:
            obs.add(Observation(clock.now, "", "s1", False, 0.1, frozenset(), frozenset()))


def test_one_failed_measurement_fails_at_once_by_default(db, clock):
    obs = Observations()
    r = rollout(db, Policy())
    az = Analyzer(db, obs)
    with db.tx() as c:
        az.begin(c, r)
    clock.now += 1
    traffic(obs, clock, canary_errors=5)
    decision, run = az.step(r)
    assert decision == FAIL and run["measurements"][0]["decision"] == FAIL


def test_failure_limit_tolerates_that_many_failed_measurements(db, clock):
    obs = Observations()
    r = rollout(db, Policy(failure_limit=1, measurement_s=10))
    az = Analyzer(db, obs)
    with db.tx() as c:
        az.begin(c, r)
    clock.now += 1
    traffic(obs, clock, canary_errors=5)
    decision, run = az.step(r)
    assert decision == RUNNING and "1 failed measurement(s) of 1 tolerated" in run["message"]
    clock.now += 1
    decision, run = az.step(r)  # a new measurement: the requests before it do not count again
    assert decision == RUNNING and [m["decision"] for m in run["measurements"]] == [FAIL, RUNNING]
    clock.now += 1
    traffic(obs, clock, canary_errors=5)
    decision, run = az.step(r)
    assert decision == FAIL and "2 failed measurements (limit 1)" in run["message"]


def test_inconclusive_limit_and_a_window_of_measurements(db, clock):
    for limit, expected in ((1, PASS), (0, INCONCLUSIVE)):
        with db.tx() as c:
            c.execute("DELETE FROM rollouts")
            c.execute("DELETE FROM rollout_shards")
        obs = Observations()
        r = rollout(db, Policy(inconclusive_limit=limit, measurement_s=10), window_s=30)
        az = Analyzer(db, obs)
        with db.tx() as c:
            az.begin(c, r)
        for quiet in (False, True, False):  # the middle measurement sees no traffic
            clock.now += 5
            if not quiet:
                traffic(obs, clock, canary_errors=0)
            assert az.step(r)[0] == RUNNING
            clock.now += 5
            decision, run = az.step(r)
        assert [m["decision"] for m in run["measurements"]] == [PASS, INCONCLUSIVE, PASS]
        assert decision == expected, run["message"]


def test_watch_after_promotion_uses_the_base_the_canary_step_measured(db, clock):
    obs = Observations()
    r = rollout(db, Policy(post_promotion_s=20), window_s=10)
    az = Analyzer(db, obs)
    with db.tx() as c:
        az.begin(c, r)
    clock.now += 5
    traffic(obs, clock, canary_errors=0)
    clock.now += 6
    assert az.step(r)[0] == PASS
    r.current_step = 1  # promoted; the last step converged: no base shards are left
    with db.tx() as c:
        az.begin(c, r, post_promotion=True)
    clock.now += 5
    traffic(obs, clock, canary_errors=2, shards=("s0", "s1"), base=False)
    decision, run = az.step(r)
    assert decision == FAIL and run["post_promotion"]
    g = run["gates"][0]
    assert (g["base_value"], g["base_samples"]) == (0.0, 5) and g["canary_value"] == pytest.approx(0.4)
    assert run["window_end"] - run["window_start"] == 20


def test_watch_without_a_measured_base_passes_only_under_max_value():
    canary = (0.0, 10)
    assert analysis.judge({**GATE, "max_value": 0.01}, canary, None)["outcome"] == PASS
    assert analysis.judge(GATE, canary, None)["outcome"] == INCONCLUSIVE  # a ratio of nothing
    assert analysis.judge({**GATE, "max_value": 0.01}, (0.5, 10), None)["outcome"] == INCONCLUSIVE


def test_reconciler_watches_the_last_step_and_rolls_back_on_failure(db, clock, tmp_path):
    """The last step converged with a watch: ANALYZING, not SUCCEEDED; a failed watch sends every shard
    back and records no release; a passed one succeeds and records the release."""
    obs = Observations()
    for outcome in ("fail", "pass"):
        with db.tx() as c:
            for t in ("rollouts", "rollout_shards", "releases"):
                c.execute(f"DELETE FROM {t}")
        r = rollout(db, Policy(post_promotion_s=10), step=1)
        with db.tx() as c:
            r.state = RolloutState.PROGRESSING
            db.update_rollout(c, r)
            for name in ("s0", "s1"):
                db.set_desired(c, name, P)
        for name in ("s0", "s1"):
            db.observe(name, {"active_version": P}, "SERVING")
        rec = Reconciler(db, PatchStore(tmp_path / "blobs"), AuditLog(db), AgentToken(AGENT_TOKEN), threading.RLock())
        rec.analyzer = Analyzer(db, obs)
        rec.advance_rollouts()
        assert db.rollout(r.id).state == RolloutState.ANALYZING
        clock.now += 5
        traffic(obs, clock, canary_errors=0 if outcome == "pass" else 5, shards=("s0", "s1"), base=False)
        clock.now += 6
        # the base the canary step measured: no errors
        _, runs = analysis.load(db, r.id)
        runs.insert(0, {"step": 0, "decision": PASS, "gates": [{"gate": GATE, "canary_value": 0.0, "base_value": 0.0,
                                                                "canary_samples": 5, "base_samples": 5}]})
        with db.tx() as c:
            analysis.save_runs(c, r.id, 60, runs)
        rec.advance_rollouts()
        got = db.rollout(r.id)
        if outcome == "fail":
            assert got.state == RolloutState.ROLLING_BACK and got.reason == "ANALYSIS_FAILED"
            assert "after promotion" in got.message
            assert [s.desired_version for s in db.shards()] == [None, None] and db.releases("s0") == []
        else:
            assert got.state == RolloutState.SUCCEEDED, got.message
            assert [(x.version, x.source) for x in db.releases("s0")][0] == (P, "rollout ro-1")
        rec.stop()


@pytest.mark.parametrize("policy, field", [
    ({"failure_limit": -1}, "analysis_policy.failure_limit"),
    ({"measurement_seconds": 90}, "analysis_policy.measurement_seconds"),
])
def test_bad_policy_is_refused_naming_the_field(policy, field):
    from factpatch.server.api.errors import ApiError
    from factpatch.server.api.services.rollouts import RolloutService
    from factpatch.v1 import rollout_pb2

    req = rollout_pb2.StartRolloutRequest(patch=P, gates=[rollout_pb2.AnalysisGate(metric="error_rate", max_ratio=1)],
                                          analysis_seconds=60, analysis_policy=rollout_pb2.AnalysisPolicy(**policy))
    with pytest.raises(ApiError) as ei:
        RolloutService._policy(req)
    assert ei.value.reason == "BAD_ANALYSIS_POLICY" and field in str(ei.value.message)
    with pytest.raises(ApiError):
        RolloutService._policy(rollout_pb2.StartRolloutRequest(patch=P, analysis_policy=rollout_pb2.AnalysisPolicy()))
