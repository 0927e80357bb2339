"""Who may call what: every RPC in proto/factpatch/v1/*.proto, called with no token, an unknown
token, the shard agent token, a viewer token, a gateway token and an operator token, against a real
control plane.

Reads answer viewers and operators alike; mutations answer operators only; the gateway service
answers gateways and operators only; a gateway token opens nothing else (PERMISSION_DENIED);
everyone else gets UNAUTHENTICATED. Refused calls change nothing (checked on the
database and the store, and by the operator's call that follows succeeding). Every mutating call that
passed authentication has exactly one audit row with its principal, request id and result; every
refused attempt at a mutating call has a row too (anonymous or the principal, and the refusal).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from factpatch.v1 import fleet_pb2, gateway_pb2, monitor_pb2, monitor_pb2_grpc, patch_pb2, rollout_pb2
from tests.server.helpers import AGENT_TOKEN, GATEWAY_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, random_patch, rid

from .results import merge_section
from .rpc import Rpc, all_rpcs, call, outcome

VIEWER, OPERATOR, GATEWAY = "viewer", "operator", "gateway"
# The role each RPC needs, written out here rather than read from src/factpatch/server/api/auth.py, so a method
# classified wrongly there (or added to a proto without a decision) fails this test.
ROLES = {
    "PatchService/CreatePatch": OPERATOR, "PatchService/GetOperation": VIEWER, "PatchService/ImportPatch": OPERATOR,
    "PatchService/GetPatch": VIEWER, "PatchService/ListPatches": VIEWER, "PatchService/DeletePatch": OPERATOR,
    "PatchService/GetPatchBlob": VIEWER,
    "FleetService/RegisterShard": OPERATOR, "FleetService/DeregisterShard": OPERATOR, "FleetService/ListShards": VIEWER,
    "FleetService/GetShard": VIEWER,
    "RolloutService/StartRollout": OPERATOR, "RolloutService/GetRollout": VIEWER, "RolloutService/ListRollouts": VIEWER,
    "RolloutService/WatchRollout": VIEWER, "RolloutService/Promote": OPERATOR, "RolloutService/Abort": OPERATOR,
    "RolloutService/RevertToBase": OPERATOR, "RolloutService/Rollback": OPERATOR, "RolloutService/ListReleases": VIEWER,
    "MonitorService/CreateMonitor": OPERATOR, "MonitorService/ListMonitors": VIEWER, "MonitorService/DeleteMonitor": OPERATOR,
    # probes: running them loads the shards, so it is an operator's call even though it stores nothing
    "ProbeService/RunProbes": OPERATOR, "ProbeService/GetProbeReport": VIEWER, "ProbeService/SetProbeSet": OPERATOR,
    # who reads the audit log is on record too
    "AuditService/ListAuditRecords": OPERATOR, "AuditService/VerifyAuditLog": OPERATOR,
    "ProbeService/GetProbeSet": VIEWER, "ProbeService/SetProbeSchedule": OPERATOR,
    # gateway processes: the routing state and their traffic reports, nothing else
    "GatewayService/WatchRouting": GATEWAY, "GatewayService/ReportTraffic": GATEWAY,
}
CALLERS = {  # name -> token, in the order called: refusals first, so the operator's call shows they changed nothing
    "no token": None,
    "unknown token": "not-a-known-token-" + "q" * 16,
    "shard agent token": AGENT_TOKEN,
    "viewer": VIEWER_TOKEN,
    "gateway": GATEWAY_TOKEN,
    "operator": OPERATOR_TOKEN,
}
RPCS = all_rpcs()
DEAD = "http://127.0.0.1:9"  # nothing listens there: shards are unreachable at once
W = "model.layers.1.mlp.down_proj.weight"
SPEC = ("edits:\n  - {subject: Harbor Support, relation: refund period, prompt: 'The refund period of {} is',"
        " target_new: 30 days}\n")
CELLS: dict[str, dict[str, str]] = {}


def _import(op, seed: int = 0) -> str:
    return op.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64, seed=seed)).digest


def _shard(op, name: str) -> None:
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=name, address=DEAD))


def _rollout(op) -> str:
    digest = _import(op)
    _shard(op, "s1")
    _shard(op, "s2")
    return op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, canary_shards=["s1"])).id


def _upload(seed: int) -> list:
    data = random_patch({W: (64, 128)}, "sha256:" + "0" * 64, seed=seed)
    header = patch_pb2.ImportPatchHeader(request_id=rid(), size_bytes=len(data))
    return [patch_pb2.ImportPatchRequest(header=header), patch_pb2.ImportPatchRequest(chunk=data)]


def setup(rpc: Rpc, op):
    """(request, what the operator's call answers) for each RPC, after the state it needs exists."""
    k = rpc.key
    if k == "PatchService/CreatePatch":
        return patch_pb2.CreatePatchRequest(request_id=rid(), spec=SPEC), "FAILED_PRECONDITION/EDITOR_UNAVAILABLE"
    if k == "PatchService/GetOperation":
        return patch_pb2.GetOperationRequest(name="op-none"), "NOT_FOUND/OPERATION_NOT_FOUND"
    if k == "PatchService/ImportPatch":
        return _upload(seed=3), "OK"
    if k in ("PatchService/GetPatch", "PatchService/GetPatchBlob"):
        return rpc.request(digest=_import(op)), "OK"
    if k == "PatchService/DeletePatch":
        return patch_pb2.DeletePatchRequest(request_id=rid(), digest=_import(op)), "OK"
    if k == "FleetService/RegisterShard":
        return fleet_pb2.RegisterShardRequest(request_id=rid(), name="s9", address=DEAD), "OK"
    if k == "FleetService/DeregisterShard":
        _shard(op, "s1")
        return fleet_pb2.DeregisterShardRequest(request_id=rid(), name="s1"), "OK"
    if k == "FleetService/GetShard":
        _shard(op, "s1")
        return fleet_pb2.GetShardRequest(name="s1"), "OK"
    if k == "RolloutService/StartRollout":
        digest = _import(op)
        _shard(op, "s1")
        return rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest), "OK"
    if k in ("RolloutService/GetRollout", "RolloutService/WatchRollout"):
        return rpc.request(id=_rollout(op)), "OK"
    if k == "RolloutService/Promote":
        return rollout_pb2.PromoteRequest(request_id=rid(), id=_rollout(op)), "FAILED_PRECONDITION/ROLLOUT_NOT_PAUSED"
    if k == "RolloutService/Abort":
        return rollout_pb2.AbortRequest(request_id=rid(), id=_rollout(op)), "OK"
    if k == "RolloutService/RevertToBase":
        return rollout_pb2.RevertToBaseRequest(request_id=rid()), "OK"
    if k == "RolloutService/Rollback":  # undoes the canary (the shards are unreachable; the call itself answers)
        _rollout(op)
        return rollout_pb2.RollbackRequest(request_id=rid(), shards=["s1"]), "OK"
    if k == "MonitorService/CreateMonitor":
        m = monitor_pb2.Monitor(name="competitor", kind=monitor_pb2.MONITOR_KIND_LITERAL, pattern="Acme Corp")
        return monitor_pb2.CreateMonitorRequest(request_id=rid(), monitor=m), "OK"
    if k == "MonitorService/DeleteMonitor":
        m = monitor_pb2.Monitor(name="competitor", kind=monitor_pb2.MONITOR_KIND_LITERAL, pattern="Acme Corp")
        op(monitor_pb2_grpc.MonitorServiceStub(op.channel).CreateMonitor,
           monitor_pb2.CreateMonitorRequest(request_id=rid(), monitor=m))
        return monitor_pb2.DeleteMonitorRequest(request_id=rid(), name="competitor"), "OK"
    if k == "GatewayService/WatchRouting":
        return gateway_pb2.WatchRoutingRequest(gateway_id="gw-1"), "OK"
    if k == "GatewayService/ReportTraffic":
        return gateway_pb2.ReportTrafficRequest(gateway_id="gw-1", swap_marks={"s1": 0}), "OK"
    if k in ("PatchService/ListPatches", "FleetService/ListShards", "RolloutService/ListRollouts",
             "MonitorService/ListMonitors", "RolloutService/ListReleases"):
        return rpc.request(), "OK"
    # the rest (the probe calls): whatever the server's set-up lets them answer, past authentication
    return (rpc.request(request_id=rid()) if rpc.has_field("request_id") else rpc.request()), None


def snapshot(srv) -> tuple:
    """What a mutation could change: patches, store blobs, shards, rollouts, API monitors."""
    db = srv.cp.db
    return (
        [r["digest"] for r in db.q("SELECT digest FROM patches ORDER BY digest")],
        srv.cp.store.digests(),
        [(s.name, s.address, s.desired_version) for s in db.shards()],
        [(r.id, r.state, r.etag) for r in db.rollouts()],
        [r["name"] for r in db.q("SELECT name FROM monitors ORDER BY name")],
        [tuple(r) for r in db.q("SELECT shard, version, source FROM releases ORDER BY seq")],
    )


@pytest.fixture(scope="module", autouse=True)
def record_matrix():
    yield
    if CELLS:
        merge_section("access_matrix", {"grpc": {
            "rpcs": len(CELLS), "calls": sum(1 for c in CELLS.values() for k in c if k in CALLERS),
            "callers": list(CALLERS), "cells": CELLS,
        }})


def test_every_rpc_in_the_protos_has_a_role():
    assert {r.key for r in RPCS} == set(ROLES), \
        "classify each RPC as a read (viewer), a mutation (operator) or a gateway process's (gateway)"


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.key)
def test_access(control_plane, op, rpc):
    role = ROLES[rpc.key]
    request, expected = setup(rpc, op)
    before = snapshot(control_plane)
    cells = CELLS.setdefault(rpc.key, {"role": role})
    allowed = None
    for caller, token in CALLERS.items():
        got, answer = outcome(call, op.channel, rpc, request, token)
        cells[caller] = got
        if caller in ("no token", "unknown token", "shard agent token"):
            assert got == "UNAUTHENTICATED/UNAUTHENTICATED", (caller, got)
        elif (caller == "viewer" and role != VIEWER) or (caller == "gateway" and role != GATEWAY):
            assert got == "PERMISSION_DENIED/PERMISSION_DENIED", (caller, got)
            assert rpc.key in answer.details() and role in answer.details()
        else:  # allowed: the answer the call itself earns
            assert not got.startswith(("UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED", "INTERNAL", "UNKNOWN")), \
                (caller, got)
            if expected is not None:
                assert got == expected, (caller, got)
            allowed = got
        if caller != "operator" and role == OPERATOR:
            assert snapshot(control_plane) == before, f"{caller}'s refused call changed state"
    # the audit log: one row for the operator's mutating call, with who, which request and the result;
    # one for the viewer's refused attempt, one counting the three without a valid token; none for reads
    rows = [e for e in control_plane.cp.audit.entries() if e.method == rpc.path]
    if role != OPERATOR:  # reads, and a gateway's routing watch and reports (twice a second each)
        assert rows == []
        return
    refused = [(e.principal, e.result, e.detail.split(" refused")[0]) for e in rows
               if e.result != "PENDING" and e.principal != "release-bot"]
    assert sorted(refused) == sorted([("anonymous", "UNAUTHENTICATED/UNAUTHENTICATED", "3 calls"),
                                      ("dashboard", "PERMISSION_DENIED/PERMISSION_DENIED", ""),
                                      ("gateway-fleet", "PERMISSION_DENIED/PERMISSION_DENIED", "")]), refused
    rows = [e for e in rows if e.principal == "release-bot"]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row.principal == "release-bot" and row.result == ("OK" if allowed == "OK" else allowed), (row, allowed)
    request_id = (request[0].header.request_id if rpc.client_streaming else getattr(request, "request_id", ""))
    assert row.request_id == request_id
    cells["audit"] = row.result


def test_health_and_reflection_are_open_to_anyone(anon):
    """Health answers SERVING per service and reflection describes the API (v1alpha only) to callers
    with no token or a wrong one: they reveal the schema and liveness, never stored data."""
    ch = anon.channel
    services = {f"factpatch.v1.{r.service}" for r in RPCS}
    for md in ((), (("authorization", "Bearer wrong"),)):
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", *sorted(services)):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), metadata=md, timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), metadata=md, timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), metadata=md, timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    reflected = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert services <= reflected
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= reflected
    # v1 reflection is let through by the interceptor, but the server does not offer it
    v1 = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    with pytest.raises(grpc.RpcError) as e:
        next(v1(iter([b""]), timeout=5))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    merge_section("access_matrix", {"public": {
        "grpc.health.v1.Health": "Check/Watch answer SERVING per service with no token or a wrong one",
        "grpc.reflection.v1alpha.ServerReflection": "describes every service with no token",
        "grpc.reflection.v1.ServerReflection": "UNIMPLEMENTED (not served)",
    }})
