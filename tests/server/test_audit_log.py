"""The audit log: chained so that edits behind the control plane's back are found, settled after a
crash, bounded under an unauthenticated flood, and readable through the API and `ctl audit`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import grpc
import pytest

from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database
from factpatch.v1 import audit_pb2, fleet_pb2
from tests.factories import random_patch

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, Client, rid, write_tokens

W = "model.layers.0.mlp.down_proj.weight"
FP = "sha256:" + "0" * 64


def _server(tmp_path) -> ControlPlaneServer:
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, reconcile_interval=0.2,
    ))
    srv.start()
    return srv


def _ctl(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from factpatch.cli import main; main()", "ctl",
                           "--address", f"127.0.0.1:{port}", *args],
                          env={"FACTPATCH_TOKEN": OPERATOR_TOKEN, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def busy(tmp_path):
    """A control plane with a few calls on record: imports, a shard, a refused call."""
    srv = _server(tmp_path)
    c = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    c.push(random_patch({W: (8, 4)}, FP), request_id=rid())
    c.push(random_patch({W: (8, 4)}, FP, seed=2), request_id=rid())
    c(c.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="s0", address="http://127.0.0.1:9"))
    yield srv, c
    c.close()
    srv.stop(0)


def _verify(c: Client) -> audit_pb2.VerifyAuditLogResponse:
    return c(c.audit.VerifyAuditLog, audit_pb2.VerifyAuditLogRequest())


def test_records_carry_who_from_where_and_what_and_the_chain_verifies(busy):
    srv, c = busy
    got = c(c.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest(limit=10))
    register = next(r for r in got.records if r.method.endswith("RegisterShard"))
    assert register.principal == "release-bot" and register.result == "OK"
    assert register.source.startswith("ipv4:127.0.0.1") and "address=http://127.0.0.1:9" in register.target
    v = _verify(c)
    assert v.intact and v.records >= 4 and v.events >= 2 * v.records - 1  # a begin and a finish per record
    assert got.head_hash.startswith("sha256:") and len(got.head_hash) == 71
    r = _ctl(srv.port, "audit", "verify")
    assert r.returncode == 0 and "intact" in r.stdout, r.stdout + r.stderr


def test_reading_the_log_needs_an_operator_and_is_itself_on_record(busy):
    srv, c = busy
    viewer = Client(f"127.0.0.1:{srv.port}", VIEWER_TOKEN)
    with pytest.raises(grpc.RpcError) as e:
        viewer(viewer.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest())
    viewer.close()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _verify(c)
    methods = [r.method for r in c(c.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest(limit=5)).records]
    assert "/factpatch.v1.AuditService/VerifyAuditLog" in methods


@pytest.mark.parametrize("tamper, says", [
    ("UPDATE audit SET result='FAILED_PRECONDITION/X' WHERE method LIKE '%RegisterShard'", "result is"),
    ("DELETE FROM audit WHERE method LIKE '%RegisterShard'", "was deleted"),
    ("INSERT INTO audit (time, principal, method, result) VALUES (1, 'mallory', '/x', 'OK')", "added outside the log"),
    ("UPDATE audit_events SET body=replace(body, 'release-bot', 'mallory') WHERE seq=1", "hash does not match"),
    ("DELETE FROM audit_events WHERE seq=2", "missing"),
])
def test_an_edit_behind_the_control_planes_back_is_found(busy, tmp_path, tamper, says):
    srv, c = busy
    assert _verify(c).intact
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        db.execute(tamper)
    v = _verify(c)
    assert not v.intact and says in v.problem, v.problem
    r = _ctl(srv.port, "audit", "verify")
    assert r.returncode == 1 and "broken" in r.stdout, r.stdout + r.stderr


def test_a_record_a_crash_left_pending_is_settled_at_the_next_start(tmp_path):
    db = Database(tmp_path / "state" / "state.db")
    log = AuditLog(db)
    cut = log.begin("system:reconciler", "agent/apply", "", "shard=s0 version=sha256:ab")  # then kill -9
    db.close()
    srv = _server(tmp_path)
    try:
        c = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
        rec = next(r for r in c(c.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest(limit=100)).records
                   if r.id == cut)
        assert rec.result == "INTERRUPTED" and rec.method == "agent/apply"
        assert _verify(c).intact
        c.close()
    finally:
        srv.stop(0)


def test_an_unauthenticated_flood_is_counted_not_stored_per_call(tmp_path):
    srv = _server(tmp_path)
    try:
        anon = Client(f"127.0.0.1:{srv.port}", None)
        for _ in range(150):
            with pytest.raises(grpc.RpcError):
                anon(anon.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="x", address="http://x"))
        anon.close()
        events = len(srv.cp.db.q("SELECT seq FROM audit_events"))
        assert events <= 2 + 16 + 3  # a begin, then writes at counts 1-16, 32, 64 and 128: not 150
        srv.cp.audit.flush_refusals()  # the exact count, as at stop or before a listing
        rows = [e for e in srv.cp.audit.entries() if e.method.endswith("RegisterShard")]
        assert len(rows) == 1
        assert rows[0].principal == "anonymous" and rows[0].result == "UNAUTHENTICATED/UNAUTHENTICATED"
        assert rows[0].detail.startswith("150 calls refused from ipv4:127.0.0.1")
        assert srv.cp.audit.verify().intact
    finally:
        srv.stop(0)


def test_records_from_before_the_chain_are_sealed_into_it(tmp_path):
    db = Database(tmp_path / "state.db")
    with db.tx() as c:
        c.execute("INSERT INTO audit (time, principal, method, result) VALUES (1.5, 'old-bot', '/old', 'OK')")
    log = AuditLog(db)
    assert log.verify().intact and log.verify().records == 1
    with sqlite3.connect(tmp_path / "state.db") as raw:
        raw.execute("UPDATE audit SET principal='someone-else'")
    assert "principal is" in log.verify().problem
    db.close()


def test_a_page_of_large_records_stays_under_a_clients_limit_and_pages_on(tmp_path):
    """Records carry what callers sent; 1,000 of them can pass the 4 MiB a gRPC client accepts by default.
    A page stops before 3 MiB and the caller pages on with before_id until every record is read."""
    from factpatch.server.api.paging import MAX_PAGE_BYTES

    srv = _server(tmp_path)
    c = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    try:
        for i in range(300):
            srv.cp.audit.record("release-bot", f"test/large-{i}", target=f"n={i}", result="OK", detail="x" * 20_000)
        seen, before, pages = set(), 0, 0
        while True:
            got = c(c.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest(limit=1000, before_id=before))
            if not got.records:
                break
            assert got.ByteSize() <= MAX_PAGE_BYTES + 64 * 1024 < 4 * 2**20
            seen |= {r.method for r in got.records if r.method.startswith("test/large-")}
            before, pages = got.records[-1].id, pages + 1
        assert seen == {f"test/large-{i}" for i in range(300)} and pages >= 2
    finally:
        c.close()
        srv.stop(0)
