"""Hostile names on a running control plane (its own process): path traversal, NUL bytes, very long
and odd names in every field that names something. Each call gets a clear status with a reason, a
bounded message, and for INVALID_ARGUMENT the field at fault; nothing lands outside the store; the
server stays healthy."""

from __future__ import annotations

import grpc
from hypothesis import example, given
from hypothesis import strategies as st

from factpatch.v1 import fleet_pb2, monitor_pb2, patch_pb2, rollout_pb2
from tests.server.helpers import OPERATOR_TOKEN, random_patch, rid

from . import served as sv
from .conftest import fuzz
from .hostile import names
from .rpc import all_rpcs, call, error_info

TARGET = "grpc_names"
FOUND_AND_FIXED = [
    "a long name (about 16 KiB and up) echoed in the error message overflowed gRPC's trailer limit: the client "
    "got RESOURCE_EXHAUSTED with no reason (messages and ErrorInfo values are now capped)",
    "MonitorService.CreateMonitor named the field of a refused monitor without its 'monitor.' prefix",
    "RegisterShard accepted addresses no request can use ('http://[::1', a DNS label over 63 characters, "
    "'http://a..b'): from then on every reconcile pass failed for every shard, and RevertToBase answered INTERNAL",
    "ListPatches with a page_token past 2^63 answered UNKNOWN (SQLite integer overflow)",
    "a retried refusal (same request_id) was replayed without its ErrorInfo metadata, so the second "
    "answer no longer named the field at fault (stored refusals now keep it)",
]
RPCS = {r.key: r for r in all_rpcs()}
BY_REQUEST = {r.request.DESCRIPTOR.full_name: r for r in RPCS.values()}
DEAD = "http://127.0.0.1:9"
# PERMISSION_DENIED: a well-formed shard address outside the allow-list (SHARD_ADDRESS_NOT_ALLOWED)
ALLOWED = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS", "PERMISSION_DENIED"}


def literal(name: str) -> monitor_pb2.Monitor:
    return monitor_pb2.Monitor(name=name, kind=monitor_pb2.MONITOR_KIND_LITERAL, pattern="Acme Corp")


# field -> the request with the hostile name in that field (each request type belongs to one RPC)
FIELDS = {
    "RegisterShard.name": lambda n: fleet_pb2.RegisterShardRequest(request_id=rid(), name=n, address=DEAD),
    "RegisterShard.address": lambda n: fleet_pb2.RegisterShardRequest(request_id=rid(), name="s-addr", address="http://" + n),
    "RegisterShard.request_id": lambda n: fleet_pb2.RegisterShardRequest(request_id=n, name="bad\x00"),
    "GetShard.name": lambda n: fleet_pb2.GetShardRequest(name=n),
    "DeregisterShard.name": lambda n: fleet_pb2.DeregisterShardRequest(request_id=rid(), name=n),
    "GetPatch.digest": lambda n: patch_pb2.GetPatchRequest(digest=n),
    "DeletePatch.digest": lambda n: patch_pb2.DeletePatchRequest(request_id=rid(), digest=n),
    "GetPatchBlob.digest": lambda n: patch_pb2.GetPatchBlobRequest(digest=n),
    "GetOperation.name": lambda n: patch_pb2.GetOperationRequest(name=n),
    "ListPatches.page_token": lambda n: patch_pb2.ListPatchesRequest(page_token=n),
    "StartRollout.patch": lambda n: rollout_pb2.StartRolloutRequest(request_id=rid(), patch=n),
    "GetRollout.id": lambda n: rollout_pb2.GetRolloutRequest(id=n),
    "WatchRollout.id": lambda n: rollout_pb2.WatchRolloutRequest(id=n),
    "Promote.id": lambda n: rollout_pb2.PromoteRequest(request_id=rid(), id=n),
    "Abort.id": lambda n: rollout_pb2.AbortRequest(request_id=rid(), id=n, message=n),
    "RevertToBase.shards": lambda n: rollout_pb2.RevertToBaseRequest(request_id=rid(), shards=[n]),
    "CreateMonitor.name": lambda n: monitor_pb2.CreateMonitorRequest(request_id=rid(), monitor=literal(n)),
    "CreateMonitor.pattern": lambda n: monitor_pb2.CreateMonitorRequest(
        request_id=rid(), monitor=monitor_pb2.Monitor(name="m-pattern", kind=monitor_pb2.MONITOR_KIND_REGEX, pattern=n)),
    "DeleteMonitor.name": lambda n: monitor_pb2.DeleteMonitorRequest(request_id=rid(), name=n),
}


def check_refusal(rpc, exc: grpc.RpcError) -> str:
    """A status a client can act on: an expected code, a reason, a short message, the field at fault."""
    code = exc.code().name
    reason, md = error_info(exc)
    assert code in ALLOWED, (rpc.key, code, exc.details())
    assert reason and exc.details(), (rpc.key, code)
    assert len(exc.details().encode()) <= 1024
    if code == "INVALID_ARGUMENT":
        root = md.get("field", "").split(".")[0].split("[")[0]
        assert root in rpc.request.DESCRIPTOR.fields_by_name, (rpc.key, reason, md)
    return f"{code}/{reason}"


def undo(s, key: str, request) -> None:
    """A hostile name that was valid after all: it reads back as sent, then goes away again."""
    op = s.op
    if key == "FleetService/RegisterShard":
        assert op(op.fleet.GetShard, fleet_pb2.GetShardRequest(name=request.name)).address == request.address.rstrip("/")
        op(op.fleet.DeregisterShard, fleet_pb2.DeregisterShardRequest(request_id=rid(), name=request.name))
    elif key == "MonitorService/CreateMonitor":
        listed = op(s.monitors.ListMonitors, monitor_pb2.ListMonitorsRequest())
        assert request.monitor.name in [m.name for m in listed.monitors]
        op(s.monitors.DeleteMonitor, monitor_pb2.DeleteMonitorRequest(request_id=rid(), name=request.monitor.name))


@fuzz(250)
@given(field=st.sampled_from(sorted(FIELDS)), name=names)
@example(field="GetShard.name", name="a" * 100_000)
@example(field="RegisterShard.name", name="é" * 60_000)
@example(field="GetPatch.digest", name="sha256:" + "a" * 100_000)
@example(field="CreateMonitor.pattern", name="(" * 5000)
@example(field="CreateMonitor.name", name="../x")
@example(field="RegisterShard.name", name="..")
@example(field="RegisterShard.address", name="[::1")
def test_hostile_names(served, tally, field, name):
    request = FIELDS[field](name)
    rpc = BY_REQUEST[request.DESCRIPTOR.full_name]
    try:
        call(served.op.channel, rpc, request, OPERATOR_TOKEN)
    except grpc.RpcError as e:
        tally.record(TARGET, check_refusal(rpc, e))
        return
    tally.record(TARGET, "OK")
    undo(served, rpc.key, request)


def test_names_left_the_server_healthy_and_contained(served, tally):
    tally.fixed[TARGET] = FOUND_AND_FIXED
    # a stored patch and two shards, so names reach the deeper checks too (rollout targets)
    digest = served.op.push(random_patch({"model.layers.1.mlp.down_proj.weight": (8, 4)}, "sha256:" + "0" * 64)).digest
    for shard in ("s1", "s2"):
        served.op(served.op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=shard, address=DEAD))
    for bad in ("../s", "/etc/passwd", "s\x00", "x" * 70_000):
        for key, request in (
            ("RolloutService/StartRollout", rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, shards=[bad])),
            ("RolloutService/StartRollout", rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, canary_shards=[bad])),
        ):
            try:
                call(served.op.channel, RPCS[key], request, OPERATOR_TOKEN)
            except grpc.RpcError as e:
                tally.record(TARGET, check_refusal(RPCS[key], e))
            else:
                raise AssertionError(f"StartRollout accepted shard name {bad[:20]!r}")
    sv.assert_healthy(served)
    sv.assert_contained(served)


def test_an_unusable_shard_address_from_the_command_line_stops_nothing(tmp_path):
    """`serve --shard` is not checked like RegisterShard: such a shard is unreachable, the others
    and RevertToBase go on."""
    s = sv.start(tmp_path, shards={"bad": "http://[::1", "long": "http://" + "a" * 64, "ok": DEAD})
    try:
        resp = s.op(s.op.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()), timeout=20)
        assert {r.shard: (r.ok, r.error_reason) for r in resp.results} == {
            "bad": (False, "UNREACHABLE"), "long": (False, "UNREACHABLE"), "ok": (False, "UNREACHABLE")}
        shards = {x.name: x for x in s.op(s.op.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards}
        assert all(x.health == fleet_pb2.SHARD_HEALTH_UNREACHABLE for x in shards.values()), shards
        sv.assert_healthy(s)
    finally:
        sv.stop(s)
