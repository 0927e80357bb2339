"""Canary analysis in the rollout, over real gateway traffic to real vLLM shards: a failing gate rolls
the canary back by itself, passing gates promote, and an empty window pauses (never promotes)."""

from __future__ import annotations

import pytest

from factpatch.v1 import rollout_pb2

pytestmark = pytest.mark.vllm

D = rollout_pb2.AnalysisDecision
Gate = rollout_pb2.AnalysisGate


def active(shard) -> str | None:
    return shard.status().json()["active_version"]


def test_failing_gate_rolls_back_automatically(stack, shards, weak_patch, fact):
    patch = stack.cl.push(weak_patch).digest
    r = stack.start(patch, canary_shards=["s0"], canary_traffic_percent=50, analysis_seconds=300,
                    gates=[Gate(metric="stale_value_rate", max_ratio=0.5, min_samples=8)])
    r = stack.wait_state(r.id, {"ANALYZING"})
    with stack.traffic(fact.prompts):
        r = stack.wait_state(r.id, {"FAILED"})
    assert r.reason == "ANALYSIS_FAILED" and "stale_value_rate" in r.message
    run = r.analysis[0]
    assert run.decision == D.Value("ANALYSIS_DECISION_FAIL") and run.canary_version == patch
    g = run.gates[0]
    assert g.outcome == D.Value("ANALYSIS_DECISION_FAIL")
    assert g.canary_samples >= 8 and g.base_samples >= 8
    assert g.canary_value > 0.5 * g.base_value and g.base_value > 0.9  # the weak patch left the old answer
    # the canary is back on base, by the rollout itself
    assert active(shards["s0"]) is None and active(shards["s1"]) is None
    assert stack.metric("factpatch_analysis_decisions_total", decision="FAIL") == 1
    # the reconciler asked s0 to revert (its call may time out under load while the shard still reverts,
    # so the audit record, not the duration histogram of answered calls, is what shows it)
    from factpatch.v1 import audit_pb2

    records = stack.cl(stack.cl.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest(limit=200)).records
    assert any(x.method == "agent/revert" and "shard=s0" in x.target for x in records)


def test_passing_gates_promote(stack, shards, fix_patch, fact):
    patch = stack.cl.push(fix_patch).digest
    # 20 s of traffic gives each side its 8 samples even when the machine is loaded (with 8 s a slow
    # run could end inconclusive and pause instead of promoting)
    # then the whole fleet is watched for 15 s after promotion, against the base the canary step measured
    r = stack.start(patch, canary_shards=["s0"], canary_traffic_percent=50, analysis_seconds=20, gates=[
        Gate(metric="stale_value_rate", max_ratio=0.5, min_samples=8),
        Gate(metric="error_rate", max_ratio=1.0, max_value=0.01, min_samples=8),
    ], analysis_policy=rollout_pb2.AnalysisPolicy(post_promotion_seconds=15))
    r = stack.wait_state(r.id, {"ANALYZING"})
    with stack.traffic(fact.prompts):
        r = stack.wait_state(r.id, {"SUCCEEDED", "PAUSED", "FAILED"})
    assert rollout_pb2.RolloutState.Name(r.state) == "ROLLOUT_STATE_SUCCEEDED", r.message
    run = r.analysis[0]
    assert run.decision == D.Value("ANALYSIS_DECISION_PASS"), run
    stale = run.gates[0]
    assert stale.canary_value == 0 and stale.base_value > 0.9
    watch = r.analysis[1]
    assert watch.post_promotion and watch.step == 1 and watch.decision == D.Value("ANALYSIS_DECISION_PASS"), watch
    assert watch.gates[0].base_value == stale.base_value and watch.gates[0].canary_samples >= 8
    assert active(shards["s0"]) == patch and active(shards["s1"]) == patch


def test_empty_window_pauses(stack, shards, fix_patch):
    patch = stack.cl.push(fix_patch).digest
    r = stack.start(patch, canary_shards=["s0"], analysis_seconds=2,
                    gates=[Gate(metric="stale_value_rate", max_ratio=0.5, min_samples=5)])
    r = stack.wait_state(r.id, {"PAUSED", "SUCCEEDED", "FAILED"})
    assert rollout_pb2.RolloutState.Name(r.state) == "ROLLOUT_STATE_PAUSED"
    assert r.reason == "ANALYSIS_INCONCLUSIVE" and r.current_step == 0
    run = r.analysis[0]
    assert run.decision == D.Value("ANALYSIS_DECISION_INCONCLUSIVE")
    assert run.gates[0].canary_samples == 0 and "5 needed" in run.gates[0].detail
    # paused, not rolled back: the canary keeps the patch until someone decides
    assert active(shards["s0"]) == patch and active(shards["s1"]) is None
    # GetRollout shows the same record
    got = stack.cl(stack.cl.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id=r.id))
    assert got.analysis == r.analysis and got.analysis_seconds == 2
    assert stack.metric("factpatch_analysis_decisions_total", decision="INCONCLUSIVE") == 1
