"""The control plane's API against a real in-process gRPC server: every error code from a real bad
call, auth, idempotency, the store, the audit log, health and reflection."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from factpatch.server.api.errors import reason_of
from factpatch.server.state.store import PatchStore, StoreCorrupt
from factpatch.v1 import fleet_pb2, patch_pb2, rollout_pb2
from tests.factories import DEMO_EDIT

from .helpers import random_patch, rid

W = "model.layers.1.mlp.down_proj.weight"
DEAD = "http://127.0.0.1:9"  # nothing listens: connection refused at once


def field_of(fn) -> tuple[str, str]:
    """(reason, field) of the refusal `fn` gets."""
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    for key, value in ei.value.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for d in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info.reason, info.metadata.get("field", "")
    return reason_of(ei.value), ""


def fails(fn, code, reason):
    with pytest.raises(grpc.RpcError) as ei:
        fn()
    assert ei.value.code() == code, ei.value.details()
    assert reason_of(ei.value) == reason, ei.value.details()
    return ei.value


@pytest.fixture
def patch_bytes():
    return random_patch({W: (64, 128)}, "sha256:" + "0" * 64)


def test_health_and_reflection_answer_without_token(anon):
    h = health_pb2_grpc.HealthStub(anon.channel)
    assert h.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    assert h.Check(health_pb2.HealthCheckRequest(service="factpatch.v1.RolloutService")).status == \
        health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(anon.channel)
    services = set(db.get_services())
    assert {"factpatch.v1.PatchService", "factpatch.v1.FleetService", "factpatch.v1.RolloutService"} <= services
    desc = db.FindFileContainingSymbol("factpatch.v1.RolloutService")
    assert "RevertToBase" in [m.name for s in desc.service if s.name == "RolloutService" for m in s.method]


def test_auth(anon, viewer, op):
    fails(lambda: anon(anon.patches.ListPatches, patch_pb2.ListPatchesRequest()),
          grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    viewer(viewer.patches.ListPatches, patch_pb2.ListPatchesRequest())
    fails(lambda: viewer(viewer.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="a", address=DEAD)),
          grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    fails(lambda: viewer.push(b"whatever"), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="a", address=DEAD))


def test_import_get_list_blob(op, viewer, patch_bytes):
    p = op.push(patch_bytes)
    assert p.digest.startswith("sha256:") and p.size_bytes == len(patch_bytes)
    assert list(p.tensors) == [W] and p.edits[0].target_new == "30 days" and p.base_fingerprint.endswith("0" * 64)
    assert op.push(patch_bytes).digest == p.digest  # same bytes, same patch
    assert viewer(viewer.patches.GetPatch, patch_pb2.GetPatchRequest(digest=p.digest)).digest == p.digest
    assert [x.digest for x in viewer(viewer.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches] == [p.digest]
    chunks = list(viewer.patches.GetPatchBlob(patch_pb2.GetPatchBlobRequest(digest=p.digest), metadata=viewer.md))
    assert b"".join(c.data for c in chunks) == patch_bytes and chunks[0].total_size == len(patch_bytes)


def test_a_page_of_large_manifests_stays_under_a_clients_limit_and_pages_on(op):
    """A manifest lists every edit of its chain, so a page of 100 patches can pass the 4 MiB a gRPC client
    accepts by default: a page stops before 3 MiB and next_page_token goes on from there."""
    from factpatch.server.api.paging import MAX_PAGE_BYTES

    digests = set()
    for seed in range(6):  # about 0.8 MB each as a message (edits and the manifest's JSON): 6 pass 4 MiB
        edits = [{**DEMO_EDIT, "subject": f"Harbor Support {seed}-{i}", "target_new": f"{i} days"} for i in range(1800)]
        digests.add(op.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64, seed=seed, edits=edits)).digest)
    seen, token, pages = [], "", 0
    while True:
        got = op(op.patches.ListPatches, patch_pb2.ListPatchesRequest(page_size=100, page_token=token))
        assert got.ByteSize() <= MAX_PAGE_BYTES + 64 * 1024 < 4 * 2**20 and got.patches
        seen += [p.digest for p in got.patches]
        pages, token = pages + 1, got.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(digests) and pages >= 2


def test_bad_uploads_change_nothing(op, patch_bytes):
    fails(lambda: op.push(patch_bytes, expected="sha256:" + "1" * 64), grpc.StatusCode.INVALID_ARGUMENT, "DIGEST_MISMATCH")
    fails(lambda: op.push(patch_bytes, expected="sha256:nothex"), grpc.StatusCode.INVALID_ARGUMENT, "BAD_DIGEST")
    big = b"\0" * ((1 << 20) + 1)
    fails(lambda: op.push(big, size=len(big)), grpc.StatusCode.INVALID_ARGUMENT, "PATCH_TOO_LARGE")
    fails(lambda: op.push(big, size=0, expected=""), grpc.StatusCode.INVALID_ARGUMENT, "PATCH_TOO_LARGE")
    fails(lambda: op.push(b"not a patch"), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_PATCH")
    assert not op(op.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches


def test_not_found_codes(op):
    d = "sha256:" + "a" * 64
    fails(lambda: op(op.patches.GetPatch, patch_pb2.GetPatchRequest(digest=d)), grpc.StatusCode.NOT_FOUND, "PATCH_NOT_FOUND")
    fails(lambda: op(op.fleet.GetShard, fleet_pb2.GetShardRequest(name="nope")), grpc.StatusCode.NOT_FOUND, "SHARD_NOT_FOUND")
    fails(lambda: op(op.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id="ro-x")), grpc.StatusCode.NOT_FOUND,
          "ROLLOUT_NOT_FOUND")
    fails(lambda: op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=d)),
          grpc.StatusCode.NOT_FOUND, "PATCH_NOT_FOUND")
    fails(lambda: op(op.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid(), shards=["ghost"])),
          grpc.StatusCode.NOT_FOUND, "SHARD_NOT_FOUND")


def test_create_patch_without_editor_model_is_a_precondition(op):
    fails(lambda: op(op.patches.CreatePatch, patch_pb2.CreatePatchRequest(request_id=rid(), spec="edits: []")),
          grpc.StatusCode.FAILED_PRECONDITION, "EDITOR_UNAVAILABLE")


def test_idempotency_one_effect_same_answer(op, control_plane):
    req = fleet_pb2.RegisterShardRequest(request_id="req-1", name="s1", address=DEAD)
    a = op(op.fleet.RegisterShard, req)
    op(op.fleet.DeregisterShard, fleet_pb2.DeregisterShardRequest(request_id="req-2", name="s1"))
    b = op(op.fleet.RegisterShard, req)  # replayed: the shard stays deregistered
    assert a == b
    assert not op(op.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards
    other = fleet_pb2.RegisterShardRequest(request_id="req-1", name="s2", address=DEAD)
    fails(lambda: op(op.fleet.RegisterShard, other), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    # a refusal is replayed too
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="s3", address=DEAD))
    dup = fleet_pb2.RegisterShardRequest(request_id="req-3", name="s3", address="http://127.0.0.1:10")
    fails(lambda: op(op.fleet.RegisterShard, dup), grpc.StatusCode.ALREADY_EXISTS, "SHARD_EXISTS")
    fails(lambda: op(op.fleet.RegisterShard, dup), grpc.StatusCode.ALREADY_EXISTS, "SHARD_EXISTS")
    # a replayed refusal keeps its ErrorInfo metadata: the field at fault, not only the reason
    bad = fleet_pb2.RegisterShardRequest(request_id="req-4", name="bad\x00", address=DEAD)
    first, again = (field_of(lambda: op(op.fleet.RegisterShard, bad)) for _ in range(2))
    assert first == again == ("BAD_SHARD_NAME", "name")
    entries = [e for e in control_plane.cp.audit.entries() if e.request_id == "req-1"]
    assert sorted(e.result for e in entries) == ["INVALID_ARGUMENT/REQUEST_ID_REUSED", "OK", "OK"]
    assert any(e.detail.startswith("replayed") for e in entries)


def test_import_is_idempotent_by_request_id(op, patch_bytes):
    a = op.push(patch_bytes, request_id="imp-1")
    b = op.push(patch_bytes, request_id="imp-1")
    assert a == b
    other = random_patch({W: (64, 128)}, "sha256:" + "0" * 64, seed=7)
    fails(lambda: op.push(other, request_id="imp-1"), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


def test_rollout_preconditions_etag_and_deadline(op, control_plane, patch_bytes):
    digest = op.push(patch_bytes).digest
    fails(lambda: op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest)),
          grpc.StatusCode.FAILED_PRECONDITION, "NO_SHARDS")
    for n in ("s1", "s2"):
        op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=n, address=DEAD))
    fails(lambda: op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
        request_id=rid(), patch=digest, steps=[rollout_pb2.RolloutStep(shards=["s9"])])),
        grpc.StatusCode.NOT_FOUND, "SHARD_NOT_FOUND")
    fails(lambda: op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
        request_id=rid(), patch=digest, shards=["s1"], canary_shards=["s2"])),
        grpc.StatusCode.INVALID_ARGUMENT, "BAD_STEPS")
    r = op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, canary_shards=["s1"]))
    assert r.state == rollout_pb2.ROLLOUT_STATE_PROGRESSING and [list(s.shards) for s in r.steps] == [["s1"], ["s1", "s2"]]
    assert op(op.fleet.GetShard, fleet_pb2.GetShardRequest(name="s1")).desired_version == digest
    assert op(op.fleet.GetShard, fleet_pb2.GetShardRequest(name="s2")).desired_version == ""
    fails(lambda: op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, shards=["s2"])),
          grpc.StatusCode.FAILED_PRECONDITION, "ROLLOUT_CONFLICT")
    fails(lambda: op(op.patches.DeletePatch, patch_pb2.DeletePatchRequest(request_id=rid(), digest=digest)),
          grpc.StatusCode.FAILED_PRECONDITION, "PATCH_DEPLOYED")
    fails(lambda: op(op.rollouts.Promote, rollout_pb2.PromoteRequest(request_id=rid(), id=r.id, etag="stale")),
          grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    fails(lambda: op(op.rollouts.Promote, rollout_pb2.PromoteRequest(request_id=rid(), id=r.id)),
          grpc.StatusCode.FAILED_PRECONDITION, "ROLLOUT_NOT_PAUSED")
    # the shard is unreachable: a watch sees no final state and ends at its deadline
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as ei:
        list(op.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=r.id), metadata=op.md, timeout=1.0))
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 5
    s1 = op(op.fleet.GetShard, fleet_pb2.GetShardRequest(name="s1"))
    assert s1.health == fleet_pb2.SHARD_HEALTH_UNREACHABLE and s1.last_error_reason == "UNREACHABLE"
    a = op(op.rollouts.Abort, rollout_pb2.AbortRequest(request_id=rid(), id=r.id, etag=r.etag))
    assert a.state == rollout_pb2.ROLLOUT_STATE_ABORTING and a.reason == "ABORTED_BY_USER"
    assert op(op.fleet.GetShard, fleet_pb2.GetShardRequest(name="s1")).desired_version == ""
    resp = op(op.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()), timeout=10)
    assert [x.ok for x in resp.results] == [False, False] and resp.results[0].error_reason == "UNREACHABLE"
    assert list(resp.aborted_rollouts) == [r.id]
    # unreachable shards never confirmed base: the rollout stays unfinished and keeps its patch
    fails(lambda: op(op.patches.DeletePatch, patch_pb2.DeletePatchRequest(request_id=rid(), digest=digest)),
          grpc.StatusCode.FAILED_PRECONDITION, "PATCH_DEPLOYED")
    methods = {e.method.rsplit("/", 1)[1] for e in control_plane.cp.audit.entries()}
    assert {"ImportPatch", "RegisterShard", "StartRollout", "Promote", "Abort", "RevertToBase", "DeletePatch"} <= methods
    assert all(e.principal == "release-bot" for e in control_plane.cp.audit.entries() if not e.principal.startswith("system:"))


def test_corrupt_blob_is_never_served(op, control_plane, patch_bytes):
    digest = op.push(patch_bytes).digest
    path = control_plane.cp.store.path(digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    fails(lambda: list(op.patches.GetPatchBlob(patch_pb2.GetPatchBlobRequest(digest=digest), metadata=op.md)),
          grpc.StatusCode.DATA_LOSS, "STORE_CORRUPT")


def test_store_roundtrip_and_verification(tmp_path):
    s = PatchStore(tmp_path)
    d = s.put(b"hello")
    assert s.get(d) == b"hello" and s.digests() == [d] and s.put(b"hello") == d
    assert not list(s.path(d).parent.glob(".incoming-*"))
    s.path(d).write_bytes(b"hellO")
    with pytest.raises(StoreCorrupt):
        s.get(d)


def test_rollouts_on_disjoint_shards_run_side_by_side(op, patch_bytes):
    """Each rollout owns its shards; canaries' traffic shares together stay within 100 %."""
    digest = op.push(patch_bytes).digest
    for n in ("s1", "s2", "s3", "s4", "s5"):
        op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=n, address=DEAD))

    def start(shards, canary, pct):
        return op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
            request_id=rid(), patch=digest, shards=shards, canary_shards=canary, canary_traffic_percent=pct))

    a = start(["s1", "s2"], ["s1"], 60)
    b = start(["s3", "s4"], ["s3"], 40)  # 60 + 40: all of the traffic, not more
    running = op(op.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest(active_only=True)).rollouts
    assert {r.id for r in running} == {a.id, b.id}
    fails(lambda: start(["s2"], ["s2"], 10), grpc.StatusCode.FAILED_PRECONDITION, "ROLLOUT_CONFLICT")
    fails(lambda: start(["s5"], ["s5"], 10), grpc.StatusCode.FAILED_PRECONDITION, "TRAFFIC_OVERCOMMITTED")
    start(["s5"], ["s5"], 0)  # by shard count: the gateway scales shares that overrun, none is starved


def test_rollouts_list_in_pages_newest_first(op, viewer, patch_bytes):
    digest = op.push(patch_bytes).digest
    started = []
    for n in ("r1", "r2", "r3"):
        op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=n, address=DEAD))
        started.append(op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
            request_id=rid(), patch=digest, shards=[n], canary_shards=[n], canary_traffic_percent=0)).id)
        time.sleep(0.01)  # distinct creation times
    seen, token, pages = [], "", 0
    while True:
        page = viewer(viewer.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest(page_size=1, page_token=token))
        seen += [r.id for r in page.rollouts]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == started[::-1] and pages == 3  # every rollout once, newest first
    everything = viewer(viewer.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest())
    assert [r.id for r in everything.rollouts] == seen and not everything.next_page_token
    fails(lambda: viewer(viewer.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest(page_token="x")),
          grpc.StatusCode.INVALID_ARGUMENT, "BAD_PAGE_TOKEN")
    for size in (-1, 1001):
        fails(lambda: viewer(viewer.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest(page_size=size)),
              grpc.StatusCode.INVALID_ARGUMENT, "BAD_PAGE_SIZE")
