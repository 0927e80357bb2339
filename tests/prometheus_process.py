"""A real Prometheus server for tests (Debian's package, installed by `make tools`): scrapes what the
test names, evaluates the rule files it names, answers on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from factpatch.harness.shard_process import free_port


class PrometheusProcesses:
    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.started: list[tuple[subprocess.Popen, object]] = []

    def __call__(self, target: str = "", config: dict | None = None) -> str:
        """Scrape one target, or run the given configuration (scrape_configs, rule_files); the URL."""
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed: `make tools` (scripts/install-tools.sh) installs Debian's package"
        n = len(self.started)
        port = free_port()
        cfg = self.tmp_path / f"prometheus-{n}.yml"
        config = config or {"scrape_configs": [{"job_name": "factpatch-gateway", "static_configs": [{"targets": [target]}]}]}
        cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, **config}))
        log_path = self.tmp_path / f"prometheus-{n}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.tmp_path / f'tsdb-{n}'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.3)

    def stop(self) -> None:
        for proc, log in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            log.close()


@pytest.fixture
def prometheus(tmp_path):
    procs = PrometheusProcesses(tmp_path)
    yield procs
    procs.stop()
