"""A control plane as its own process (`factpatch serve`) for the hostile-input tests, and the checks
that every such test ends with: still serving, no unhandled exception in its log, and nothing
written outside its state folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from factpatch.harness.control_plane_process import ControlPlaneProcess
from factpatch.server.cli.client import Client
from factpatch.v1 import fleet_pb2, monitor_pb2_grpc
from tests.server.helpers import AGENT_TOKEN, OPERATOR_TOKEN, write_tokens

LIMIT_MB = 1  # the largest patch ImportPatch takes here (--max-patch-mb)
# what `factpatch serve` may leave beside its state folder, and the database files inside it
TOP_LEVEL = {"tokens.yaml", "serve.log", "serve.port", "gateway.port"}
# the database, and the lock that keeps a second control plane off this state directory
DB_FILES = {"state.db", "state.db-wal", "state.db-shm", "control-plane.lock"}


@dataclass
class Served:
    proc: ControlPlaneProcess
    root: Path
    op: Client

    @property
    def monitors(self):
        return monitor_pb2_grpc.MonitorServiceStub(self.op.channel)

    @property
    def log(self) -> str:
        return (self.root / "serve.log").read_text(errors="replace")


def start(root: Path, shards: dict[str, str] | None = None) -> Served:
    tokens = write_tokens(root / "tokens.yaml")
    proc = ControlPlaneProcess(root / "state", tokens, AGENT_TOKEN, shards=shards or {}, gateway=False, interval=0.3,
                               extra_args=["--max-patch-mb", str(LIMIT_MB)]).start()
    return Served(proc, root, Client(proc.target, OPERATOR_TOKEN))


def stop(s: Served) -> None:
    s.op.close()
    s.proc.stop()


def assert_healthy(s: Served) -> None:
    """Still running, still answering, and no traceback (an exception nothing handled) in its log."""
    assert s.proc.proc.poll() is None, s.log[-3000:]
    with grpc.insecure_channel(s.proc.target) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    s.op(s.op.fleet.ListShards, fleet_pb2.ListShardsRequest(), timeout=10)
    assert "Traceback" not in s.log, s.log[max(0, s.log.index("Traceback") - 300):][:4000]


def assert_contained(s: Served) -> None:
    """Every file is the database, a blob named by the sha256 of its bytes, or the server's own
    port/log files: no name from a request ever became a path."""
    state = s.root / "state"
    for path in s.root.rglob("*"):
        if path.is_dir():
            continue
        rel = path.relative_to(s.root)
        if len(rel.parts) == 1:
            assert rel.name in TOP_LEVEL, f"unexpected file {rel}"
            continue
        assert rel.parts[0] == "state", f"unexpected file {rel}"
        inner = path.relative_to(state)
        if len(inner.parts) == 1:
            assert inner.name in DB_FILES, f"unexpected file {rel}"
            continue
        assert inner.parts[:2] == ("patches", "sha256") and len(inner.parts) == 4, f"unexpected file {rel}"
        sub, name = inner.parts[2], inner.parts[3]
        assert name.startswith(sub) and len(name) == 64, f"unexpected file {rel}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name, f"{rel} does not hold the bytes it is named by"
