"""A real Prometheus (Debian's package, installed by `make tools`) scrapes the gateway; the stale-value
rate per version, asked over Prometheus's HTTP API, is lower on the canary than on base."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest

from factpatch.harness.shard_process import free_port

pytestmark = pytest.mark.vllm

STALE_RATE = ('sum by (version) (rate(factpatch_monitor_matches_total{monitor=~"stale:.*"}[1m]))'
              ' / sum by (version) (rate(factpatch_monitor_evaluated_total{monitor=~"stale:.*"}[1m]))')


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make tools` (scripts/install-tools.sh) installs Debian's package"
    port = free_port()
    started = []

    def start(target: str) -> str:
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                       f"scrape_configs:\n  - job_name: factpatch-gateway\n    static_configs: [{{targets: ['{target}']}}]\n")
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.3)

    yield start
    for proc, log in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


def query(url: str, promql: str) -> dict[str, float]:
    r = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=10).json()
    assert r["status"] == "success", r
    return {s["metric"].get("version", ""): float(s["value"][1]) for s in r["data"]["result"]}


def test_prometheus_sees_canary_stale_rate_below_base(stack, fix_patch, fact, prometheus):
    prom = prometheus(f"127.0.0.1:{stack.srv.gateway.port}")
    patch = stack.cl.push(fix_patch).digest
    r = stack.start(patch, canary_shards=["s0"], canary_traffic_percent=50)
    r = stack.wait_state(r.id, {"PAUSED"})
    stack.wait_split(r.id, ("s0",))

    rates: dict[str, float] = {}
    with stack.traffic(fact.prompts) as counts:
        deadline = time.monotonic() + 120
        # both series, each with traffic between two scrapes (0/0 reads NaN when one version got none yet)
        while not (patch in rates and "base" in rates and not any(math.isnan(x) for x in rates.values())):
            assert time.monotonic() < deadline, f"no stale rate for both versions in Prometheus: {rates}, {counts}"
            time.sleep(1)
            rates = query(prom, STALE_RATE)
    assert rates[patch] < rates["base"], rates
    assert rates[patch] == 0 and rates["base"] > 0.9
    # the fleet's state is there too
    assert query(prom, "factpatch_shard_active_version")[patch] == 1
    up = httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in up] == ["up"]
