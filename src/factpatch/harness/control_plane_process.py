"""`factpatch serve` as a child process: for the demo, benchmarks and tests that must kill -9 it.

The control plane writes the ports it bound (gRPC and gateway, either may be :0) to files named by
FACTPATCH_PORT_FILE / FACTPATCH_GATEWAY_PORT_FILE; the launcher waits for those and for gRPC health.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def stop_group(proc: subprocess.Popen | None, log=None) -> None:
    """SIGTERM to a child's process group, SIGKILL after 15 s; closes its log file."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if log is not None and not log.closed:
        log.close()


class ControlPlaneProcess:
    def __init__(self, state_dir: Path, client_tokens_file: Path, agent_token: str, shards: dict[str, str],
                 base_dirs: list[str] = (), interval: float = 0.3, gateway: bool = True,
                 extra_args: list[str] = (), file_size_limit: int | None = None, listen: str = "127.0.0.1:0"):
        self.state_dir = Path(state_dir)
        self.argv = [sys.executable, "-c", "from factpatch.cli import main; main()", "serve",
                     "--state-dir", str(state_dir), "--listen", listen,
                     "--client-tokens-file", str(client_tokens_file),
                     "--reconcile-interval", str(interval),
                     "--gateway-listen", "127.0.0.1:0" if gateway else "off", *extra_args]
        for name, url in shards.items():
            self.argv += ["--shard", f"{name}={url}"]
        for d in base_dirs:
            self.argv += ["--base-dir", str(d)]
        self.agent_token = agent_token
        self.gateway = gateway
        self.file_size_limit = file_size_limit  # RLIMIT_FSIZE: how tests make the disk "full"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.gateway_port: int | None = None
        self.log_path = self.state_dir.parent / "serve.log"
        self.env: dict[str, str] = {}  # added to the environment of the next start (e.g. armed failpoints)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self, timeout: float = 60) -> "ControlPlaneProcess":
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        port_file = self.state_dir.parent / "serve.port"
        gw_file = self.state_dir.parent / "gateway.port"
        for f in (port_file, gw_file):
            f.unlink(missing_ok=True)
        env = {**os.environ, "FACTPATCH_AGENT_TOKEN": self.agent_token, "FACTPATCH_PORT_FILE": str(port_file),
               "FACTPATCH_GATEWAY_PORT_FILE": str(gw_file), **self.env}
        self._log = open(self.log_path, "ab")
        limit = self.file_size_limit

        def preexec() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        self.proc = subprocess.Popen(self.argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            # serve writes the gateway's port after the control plane's: up once every port it serves is known
            self.port, self.gateway_port = _port_in(port_file), _port_in(gw_file)
            if self.port is not None and (self.gateway_port is not None or not self.gateway) and self._serving():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("serve did not come up")

    def _serving(self) -> bool:
        with grpc.insecure_channel(self.target) as ch:
            st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        return st == health_pb2.HealthCheckResponse.SERVING

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        stop_group(self.proc, getattr(self, "_log", None))


def _port_in(path: Path) -> int | None:
    """The port a port file names; None until it is written."""
    text = path.read_text() if path.exists() else ""
    return int(text) if text.strip() else None
