"""Faults around the patch store, on a real `factpatch serve` process: the disk fills during an upload,
the process is killed -9 in the middle of one, a stored file is corrupted. Each time nothing
half-written stays, nothing already stored or audited is lost, and the API says what happened."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from factpatch.harness.control_plane_process import ControlPlaneProcess
from factpatch.server.api.errors import reason_of
from factpatch.server.state.db import Database
from factpatch.v1 import fleet_pb2, patch_pb2
from tests.reliability.results import merge_section

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, random_patch, rid, write_tokens

W = "model.layers.0.mlp.down_proj.weight"
FP = "sha256:" + "0" * 64


def _serve(tmp_path, **kw) -> ControlPlaneProcess:
    tokens = tmp_path / "tokens.yaml"
    if not tokens.exists():
        write_tokens(tokens)
    return ControlPlaneProcess(tmp_path / "state", tokens, AGENT_TOKEN, shards={}, gateway=False,
                               extra_args=["--max-patch-mb", "64"], **kw).start()


def _store_files(tmp_path) -> list:
    return sorted(p.name for p in (tmp_path / "state" / "patches").rglob("*") if p.is_file())


def _audit(tmp_path) -> list:
    db = Database(tmp_path / "state" / "state.db")
    try:
        return [dict(r) for r in db.q("SELECT method, result, target FROM audit ORDER BY id")]
    finally:
        db.close()


def test_full_disk_during_upload(tmp_path):
    cp = _serve(tmp_path, file_size_limit=3 << 20)  # no file of the process may grow past 3 MiB
    cl = Client(cp.target, OPERATOR_TOKEN)
    try:
        small = cl.push(random_patch({W: (64, 128)}, FP)).digest
        big = random_patch({W: (4096, 4096)}, FP, rank=128, seed=1)  # about 4 MiB
        assert len(big) > 3 << 20
        with pytest.raises(grpc.RpcError) as e:
            cl.push(big)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(e.value) == "STORE_FULL"
        assert "no room" in e.value.details()
        # nothing half-stored; what was stored before is intact and still listed
        assert _store_files(tmp_path) == [small.split(":")[1]]
        listed = cl(cl.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches
        assert [p.digest for p in listed] == [small]
        # the server stays up and takes patches that fit
        again = cl.push(random_patch({W: (64, 128)}, FP, seed=2)).digest
        assert again != small
    finally:
        cl.close()
        cp.stop()
    results = [(a["method"].rsplit("/", 1)[1], a["result"]) for a in _audit(tmp_path)]
    assert results == [("ImportPatch", "OK"), ("ImportPatch", "RESOURCE_EXHAUSTED/STORE_FULL"), ("ImportPatch", "OK")]
    merge_section("faults", {"store_disk_full_during_upload": "survived: STORE_FULL, nothing half-stored, audit complete"})


def test_kill9_in_the_middle_of_an_upload(tmp_path):
    cp = _serve(tmp_path)
    cl = Client(cp.target, OPERATOR_TOKEN)
    stored = cl.push(random_patch({W: (64, 128)}, FP)).digest
    data = random_patch({W: (1024, 1024)}, FP, rank=64, seed=3)
    sent = threading.Event()

    def slow_parts():
        import hashlib

        yield patch_pb2.ImportPatchRequest(header=patch_pb2.ImportPatchHeader(
            request_id=rid(), expected_digest="sha256:" + hashlib.sha256(data).hexdigest(), size_bytes=len(data)))
        for i in range(0, len(data), 1 << 16):
            yield patch_pb2.ImportPatchRequest(chunk=data[i : i + (1 << 16)])
            sent.set()
            time.sleep(0.05)

    errors = []

    def upload():
        try:
            cl.patches.ImportPatch(slow_parts(), metadata=cl.md, timeout=60)
        except grpc.RpcError as e:
            errors.append(e.code())

    t = threading.Thread(target=upload)
    t.start()
    assert sent.wait(10)
    time.sleep(0.3)
    cp.kill9()
    t.join(timeout=30)
    cl.close()
    assert errors == [grpc.StatusCode.UNAVAILABLE]

    cp = _serve(tmp_path)  # restart on the same state
    cl = Client(cp.target, OPERATOR_TOKEN)
    try:
        assert [p.digest for p in cl(cl.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches] == [stored]
        assert _store_files(tmp_path) == [stored.split(":")[1]]
        # the retry with the same bytes goes through
        assert cl.push(data).digest.startswith("sha256:")
    finally:
        cl.close()
        cp.stop()
    # every call is in the audit log; the one cut short was settled INTERRUPTED by the restart
    results = [a["result"] for a in _audit(tmp_path)]
    assert results.count("OK") == 2 and results.count("PENDING") == 0 and results.count("INTERRUPTED") <= 1
    merge_section("faults", {"control_plane_kill9_mid_upload": "survived: no partial file or record, retry stored"})


def test_corrupted_stored_patch_is_reported_not_served(tmp_path):
    cp = _serve(tmp_path)
    cl = Client(cp.target, OPERATOR_TOKEN)
    try:
        digest = cl.push(random_patch({W: (64, 128)}, FP)).digest
        path = next(p for p in (tmp_path / "state" / "patches").rglob(digest.split(":")[1]))
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(grpc.RpcError) as e:
            list(cl.patches.GetPatchBlob(patch_pb2.GetPatchBlobRequest(digest=digest), metadata=cl.md, timeout=10))
        assert e.value.code() == grpc.StatusCode.DATA_LOSS and reason_of(e.value) == "STORE_CORRUPT"
        # the record is still there to see and delete; the bytes never leave the store
        assert cl(cl.patches.GetPatch, patch_pb2.GetPatchRequest(digest=digest)).digest == digest
        merge_section("faults", {"corrupted_stored_patch": "detected: DATA_LOSS / STORE_CORRUPT, never served"})
    finally:
        cl.close()
        cp.stop()


def test_full_disk_under_the_state_database(tmp_path):
    """The state database's files stop growing (RLIMIT_FSIZE on the running process, as a full disk
    would): mutations are refused with RESOURCE_EXHAUSTED / STATE_FULL and change nothing, reads keep
    working, and once there is room again writes resume without a restart; nothing committed is lost."""
    import resource

    cp = _serve(tmp_path)
    cl = Client(cp.target, OPERATOR_TOKEN)
    try:
        digest = cl.push(random_patch({W: (64, 128)}, FP)).digest
        state = tmp_path / "state"
        biggest = max(p.stat().st_size for p in state.glob("state.db*"))
        # the soft limit only: lifting it again needs no privilege
        resource.prlimit(cp.proc.pid, resource.RLIMIT_FSIZE, (biggest + (64 << 10), resource.RLIM_INFINITY))
        registered, refused = [], None
        for i in range(2000):  # each call writes audit rows and a shard row until the files may not grow
            try:
                cl(cl.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=f"s{i}",
                                                                          address="http://127.0.0.1:9"))
                registered.append(f"s{i}")
            except grpc.RpcError as e:
                refused = e
                break
        assert refused is not None, "the state database never filled"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(refused) == "STATE_FULL", refused
        assert "state database" in refused.details()
        # reads keep working, and show exactly what was committed
        names = [s.name for s in cl(cl.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards]
        assert sorted(names) == sorted(registered)
        assert cl(cl.patches.GetPatch, patch_pb2.GetPatchRequest(digest=digest)).digest == digest
        # room again: the next change goes through, without a restart
        resource.prlimit(cp.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        cl(cl.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="after", address="http://127.0.0.1:9"))
    finally:
        cl.close()
        cp.stop()
    cp = _serve(tmp_path)  # and all of it is still there after a restart
    cl = Client(cp.target, OPERATOR_TOKEN)
    try:
        names = {s.name for s in cl(cl.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards}
        assert names == {*registered, "after"}
        assert [p.digest for p in cl(cl.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches] == [digest]
    finally:
        cl.close()
        cp.stop()
    db = Database(tmp_path / "state" / "state.db")
    try:
        from factpatch.server.state.audit import AuditLog

        verdict = AuditLog(db).verify()
    finally:
        db.close()
    assert verdict.intact, verdict.problem
    merge_section("faults", {"state_database_disk_full": f"survived: STATE_FULL after {len(registered)} changes, "
                                                         "reads kept working, writes resumed with room, nothing lost"})
