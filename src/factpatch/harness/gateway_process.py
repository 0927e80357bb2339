"""`factpatch gateway` as a child process, for tests and benchmarks that run it apart from the
control plane (and kill one or the other).

The gateway writes the port it bound to the file named by FACTPATCH_GATEWAY_PORT_FILE; the launcher
waits for it and for /health to answer 200, which it does once the first routing snapshot arrived.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from factpatch.harness.control_plane_process import stop_group


class GatewayProcess:
    def __init__(self, workdir: Path, control_plane: str, token: str, gateway_id: str = "gateway-0",
                 extra_args: list[str] = ()):
        self.workdir = Path(workdir)
        self.argv = [sys.executable, "-c", "from factpatch.cli import main; main()", "gateway",
                     "--control-plane", control_plane, "--listen", "127.0.0.1:0", "--gateway-id", gateway_id,
                     *extra_args]
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = self.workdir / f"{gateway_id}.log"
        self.port_file = self.workdir / f"{gateway_id}.port"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "GatewayProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port_file.unlink(missing_ok=True)
        env = {**os.environ, "FACTPATCH_TOKEN": self.token, "FACTPATCH_GATEWAY_PORT_FILE": str(self.port_file)}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            if self.port is None and self.port_file.exists() and self.port_file.read_text():
                self.port = int(self.port_file.read_text())
            if self.port is not None:
                try:
                    if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not come up: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_group(self.proc, getattr(self, "_log", None))

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
