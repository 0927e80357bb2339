"""A crash at every step of storing a patch: `factpatch serve` dies by SIGKILL at an armed failpoint
(core.failpoints), restarts on the same state, and these hold each time —

- no partial blob is ever served, and none is left on disk (no dot-file, no blob without a record);
- the patch is either wholly there (listed, its bytes read back equal) or wholly absent;
- the audit log is complete: the cut-short call is settled INTERRUPTED, nothing stays PENDING, and the
  hash chain verifies;
- the same upload, sent again, is stored.

(The crash between a shard's switch and its audit row is in tests/gateway/test_fleet.py, on a real shard.)
"""

from __future__ import annotations

import grpc
import pytest

from factpatch.core import failpoints
from factpatch.harness.control_plane_process import ControlPlaneProcess
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database
from factpatch.v1 import patch_pb2
from tests.reliability.results import merge_section

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, random_patch, write_tokens

W = "model.layers.0.mlp.down_proj.weight"
FP = "sha256:" + "0" * 64
STORE_POINTS = [n for n in failpoints.NAMES if n.startswith(("store.", "import."))]
# Where the patch must be after the restart: the record is the commit point.
COMMITTED = {"import.after_record"}
SEEN: dict[str, str] = {}


def _files(state) -> list[str]:
    return sorted(str(p.relative_to(state)) for p in (state / "patches").rglob("*") if p.is_file())


@pytest.fixture(scope="module", autouse=True)
def record():
    yield
    if SEEN:
        merge_section("faults", {"crash_points_storing_a_patch": SEEN})


def test_every_failpoint_name_is_known_and_a_misspelt_one_is_refused(tmp_path):
    assert len(STORE_POINTS) == 5
    write_tokens(tmp_path / "tokens.yaml")
    cp = ControlPlaneProcess(tmp_path / "state", tmp_path / "tokens.yaml", AGENT_TOKEN, shards={}, gateway=False)
    cp.env = {failpoints.ENV: "store.put.after_nothing"}
    with pytest.raises(RuntimeError, match="unknown failpoints"):
        cp.start()


@pytest.mark.parametrize("point", STORE_POINTS)
def test_crash_while_storing_a_patch(tmp_path, point):
    write_tokens(tmp_path / "tokens.yaml")
    state = tmp_path / "state"
    cp = ControlPlaneProcess(state, tmp_path / "tokens.yaml", AGENT_TOKEN, shards={}, gateway=False)
    cl = Client(cp.start().target, OPERATOR_TOKEN)
    kept_bytes = random_patch({W: (64, 128)}, FP)
    kept = cl.push(kept_bytes).digest  # stored before: must survive untouched
    cl.close()
    cp.stop()

    cp.env = {failpoints.ENV: point}
    cl = Client(cp.start().target, OPERATOR_TOKEN)
    data = random_patch({W: (64, 128)}, FP, seed=7)
    with pytest.raises(grpc.RpcError) as ei:
        cl.push(data)
    cl.close()
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cp.proc.wait(timeout=30) == -9  # died at the failpoint, as kill -9 would leave it
    cp._log.close()

    cp.env = {}
    cl = Client(cp.start().target, OPERATOR_TOKEN)
    try:
        listed = [p.digest for p in cl(cl.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches]
        assert kept in listed
        new = [d for d in listed if d != kept]
        if point in COMMITTED:
            assert len(new) == 1
        else:
            assert new == []
        for d in listed:  # whatever is listed reads back whole
            blob = b"".join(c.data for c in cl.patches.GetPatchBlob(patch_pb2.GetPatchBlobRequest(digest=d), metadata=cl.md))
            assert blob == (data if d in new else kept_bytes)
        files = _files(state)
        assert not any(f.rsplit("/", 1)[-1].startswith(".") for f in files), files  # no unfinished write left
        assert len(files) == len(listed)  # no blob without its record
        again = cl.push(data).digest  # the upload, sent again
        assert again in [p.digest for p in cl(cl.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches]
    finally:
        cl.close()
        cp.stop()

    db = Database(state / "state.db")
    try:
        results = [r["result"] for r in db.q("SELECT method, result FROM audit WHERE method LIKE '%ImportPatch'")]
        verdict = AuditLog(db).verify()
    finally:
        db.close()
    assert results == ["OK", "INTERRUPTED", "OK"], results
    assert verdict.intact, verdict.problem
    SEEN[point] = "survived: " + ("stored whole" if point in COMMITTED else "absent, no partial blob") + \
        "; audit INTERRUPTED; retry stored"
