"""Database records to API messages."""

from __future__ import annotations

import json
import sqlite3

from google.protobuf.timestamp_pb2 import Timestamp

from factpatch.server.state import db as dbm
from factpatch.server.state.rollout_state import to_proto
from factpatch.v1 import common_pb2, fleet_pb2, rollout_pb2


def ts(t: float | None) -> Timestamp | None:
    if t is None:
        return None
    out = Timestamp()
    out.FromNanoseconds(int(t * 1e9))
    return out


def patch(row: sqlite3.Row, deployed_on: list[str] = ()) -> common_pb2.Patch:
    m = json.loads(row["manifest"])
    edits = [
        common_pb2.Edit(
            subject=str(e.get("subject", "")), relation=str(e.get("relation", "")), prompt=str(e.get("prompt", "")),
            target_new=str(e.get("target_new", "")), target_old=str(e.get("target_old") or ""),
            provenance_json=json.dumps(e.get("provenance") or {}, sort_keys=True),
        )
        for e in m.get("edits") or []
    ]
    return common_pb2.Patch(
        digest=row["digest"], size_bytes=row["size"], base_model=row["base_model"] or "",
        base_fingerprint=row["base_fingerprint"] or "", method=str(m.get("method") or ""),
        layers=[int(x) for x in m.get("layers") or []], tensors=json.loads(row["tensors"]), edits=edits,
        parent=m.get("parent") or "", created=str(m.get("created") or ""), imported_at=ts(row["imported_at"]),
        manifest_json=row["manifest"], deployed_on=list(deployed_on), signed_by=row["signed_by"] or "",
        has_signature=bool(row["signature"]),
    )


HEALTH = {
    "SERVING": fleet_pb2.SHARD_HEALTH_SERVING,
    "SYNCING": fleet_pb2.SHARD_HEALTH_SYNCING,
    "UNREACHABLE": fleet_pb2.SHARD_HEALTH_UNREACHABLE,
    "ERROR": fleet_pb2.SHARD_HEALTH_ERROR,
}


def shard(s: dbm.Shard) -> fleet_pb2.Shard:
    o = s.observed
    return fleet_pb2.Shard(
        name=s.name, address=s.address, agent_address=s.agent_address, health=HEALTH.get(s.health, fleet_pb2.SHARD_HEALTH_UNSPECIFIED),
        model=str(o.get("model") or ""), base_fingerprint=str(o.get("base_fingerprint") or ""),
        active_version=str(o.get("active_version") or ""), desired_version=s.desired_version or "",
        last_seen=ts(s.last_seen), last_error_reason=s.last_error_reason, last_error=s.last_error,
        tensor_parallel_size=int(o.get("tensor_parallel_size") or 0), applied_at=str(o.get("applied_at") or ""),
        swapping=bool(o.get("swapping")), bytes_held=int(o.get("bytes_held") or 0),
    )


def gate_result(g: dict) -> rollout_pb2.GateResult:
    D = rollout_pb2.AnalysisDecision
    return rollout_pb2.GateResult(
        gate=rollout_pb2.AnalysisGate(**g["gate"]), canary_value=g["canary_value"], base_value=g["base_value"],
        canary_samples=g["canary_samples"], base_samples=g["base_samples"],
        outcome=D.Value("ANALYSIS_DECISION_" + g["outcome"]), detail=g["detail"],
    )


def analysis_run(run: dict) -> rollout_pb2.AnalysisRun:
    D = rollout_pb2.AnalysisDecision
    return rollout_pb2.AnalysisRun(
        step=run["step"], decision=D.Value("ANALYSIS_DECISION_" + run["decision"]),
        window_start=ts(run["window_start"]), window_end=ts(run["window_end"]),
        canary_version=run.get("canary_version") or "", base_versions=run.get("base_versions") or [],
        gates=[gate_result(g) for g in run.get("gates") or []],
        message=run.get("message") or "",
        measurements=[
            rollout_pb2.AnalysisMeasurement(start=ts(m["start"]), end=ts(m["end"]),
                                            decision=D.Value("ANALYSIS_DECISION_" + m["decision"]),
                                            gates=[gate_result(g) for g in m.get("gates") or []])
            for m in run.get("measurements") or []
        ],
        post_promotion=bool(run.get("post_promotion")),
    )


def rollout(r: dbm.Rollout, shards: dict[str, dbm.Shard] | None = None,
            analysis: tuple[float, list[dict]] | None = None, policy=None) -> rollout_pb2.Rollout:
    """`policy`: the rollout's analysis.Policy, when it has gates."""
    shards = shards or {}
    window_s, runs = analysis or (0, [])
    policy_msg = None
    if policy is not None and r.gates:
        policy_msg = rollout_pb2.AnalysisPolicy(
            failure_limit=policy.failure_limit, inconclusive_limit=policy.inconclusive_limit,
            measurement_seconds=int(policy.measurement_s), post_promotion_seconds=int(policy.post_promotion_s))
    return rollout_pb2.Rollout(
        id=r.id, patch=r.patch, state=to_proto(r.state),
        steps=[rollout_pb2.RolloutStep(shards=s["shards"], traffic_percent=s.get("traffic_percent", 0)) for s in r.steps],
        current_step=r.current_step, etag=r.etag, reason=r.reason, message=r.message,
        shards=[
            rollout_pb2.ShardProgress(
                shard=rs.shard, previous_version=rs.previous_version or "", desired_version=rs.desired_version or "",
                active_version=str((shards[rs.shard].observed.get("active_version") if rs.shard in shards else "") or ""),
                error_reason=rs.error_reason, error=rs.error,
            )
            for rs in r.shards
        ],
        gates=[rollout_pb2.AnalysisGate(**g) for g in r.gates],
        progress_deadline_seconds=r.progress_deadline_s, created_by=r.created_by,
        created=ts(r.created), updated=ts(r.updated),
        analysis=[analysis_run(x) for x in runs], analysis_seconds=int(window_s) if r.gates else 0,
        analysis_policy=policy_msg,
    )
