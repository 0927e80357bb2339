"""`factpatch gateway` as a process of its own in front of the package's two real vLLM shards, fed by a
control plane process: kill -9 the control plane during traffic and no request fails; the gateway takes
up the restarted control plane, whose canary rollout then runs on the gateway's traffic (its analysis
counts the gateway's samples) and swaps the shards under that traffic with every response tagged by
the version that made it."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factpatch.core.version_label import version_label
from factpatch.harness.control_plane_process import ControlPlaneProcess
from factpatch.harness.gateway_process import GatewayProcess
from factpatch.v1 import rollout_pb2
from tests.server.helpers import AGENT_TOKEN, GATEWAY_TOKEN, OPERATOR_TOKEN, Client, rid, write_tokens

pytestmark = pytest.mark.vllm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gauge(url: str, name: str, **labels) -> float | None:
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def wait_for(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def traffic(url: str, model: str, prompt: str):
    """Keyed requests one after another; yields the list of (time, status, version, shard, text)."""
    stop, seen = threading.Event(), []

    def run():
        i = 0
        with httpx.Client(base_url=url, timeout=120) as h:
            while not stop.is_set():
                r = h.post("/v1/completions", headers={"X-Factpatch-Route-Key": f"user-{i}"}, json={
                    "model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0.0})
                text = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text
                seen.append((time.monotonic(), r.status_code, r.headers.get("X-Factpatch-Version"),
                             r.headers.get("X-Factpatch-Shard"), text))
                i += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join(timeout=120)


def test_gateway_keeps_serving_through_a_control_plane_kill9(tmp_path, shards, fixture_dir, fix_patch, fact):
    for s in shards.values():
        assert s.revert().status_code == 200
    cp_metrics = f"http://127.0.0.1:{free_port()}"
    cp = ControlPlaneProcess(tmp_path / "cp" / "state", write_tokens(tmp_path / "tokens.yaml"), AGENT_TOKEN,
                             {n: s.endpoints for n, s in shards.items()}, interval=0.2, gateway=False,
                             listen=f"127.0.0.1:{free_port()}",
                             extra_args=["--metrics-listen", cp_metrics.removeprefix("http://")]).start()
    gw_tokens = write_tokens(tmp_path / "gateway-tokens.yaml")  # who may force a route
    gw = GatewayProcess(tmp_path / "gw", cp.target, GATEWAY_TOKEN, extra_args=["--client-tokens-file", str(gw_tokens)])
    cl = Client(cp.target, OPERATOR_TOKEN)
    try:
        gw.start()
        # the gateway exports its own tokens file's state: a broken edit shows at the next scrape
        assert (gauge(gw.url, "factpatch_client_tokens_file_valid"), gauge(gw.url, "factpatch_client_tokens")) == (1, 3)
        good = gw_tokens.read_text()
        gw_tokens.write_text("- {principal: ops, role: superuser, token: x}\n")
        assert (gauge(gw.url, "factpatch_client_tokens_file_valid"), gauge(gw.url, "factpatch_client_tokens")) == (0, 3)
        gw_tokens.write_text(good)
        assert gauge(gw.url, "factpatch_client_tokens_file_valid") == 1
        with traffic(gw.url, str(fixture_dir), fact.prompts[0]) as seen:
            wait_for("both shards to serve", lambda: {x[3] for x in seen} >= {"s0", "s1"})
            assert gauge(gw.url, "factpatch_gateway_control_plane_connected") == 1

            cp.kill9()
            killed_at = time.monotonic()
            wait_for("the gateway to notice", lambda: gauge(gw.url, "factpatch_gateway_control_plane_connected") == 0)
            time.sleep(2.0)  # serving on the last routing state it knew
            cp.start()
            restarted_at = time.monotonic()
            wait_for("the gateway to follow the new control plane",
                     lambda: gauge(gw.url, "factpatch_gateway_control_plane_connected") == 1)
            during_outage = [x for x in seen if killed_at < x[0] < restarted_at]

            # the returned control plane runs a canary on the gateway's traffic, analysed and promoted
            patch = cl.push(fix_patch).digest
            r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
                request_id=rid(), patch=patch, canary_shards=["s0"], canary_traffic_percent=50, analysis_seconds=8,
                gates=[rollout_pb2.AnalysisGate(metric="stale_value_rate", max_ratio=0.5, min_samples=5)]))
            final = None
            for final in cl.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=r.id), metadata=cl.md, timeout=180):
                if final.state in (rollout_pb2.ROLLOUT_STATE_SUCCEEDED, rollout_pb2.ROLLOUT_STATE_FAILED,
                                   rollout_pb2.ROLLOUT_STATE_PAUSED):
                    break
            wait_for("the promoted patch on every shard", lambda: {x[2] for x in seen[-4:]} == {patch})
            # fleet series from the control plane, request series from the gateway process
            for shard in ("s0", "s1"):
                # the gateway's answers can show the patch a reconcile pass before the control plane's
                # gauge reads the shard's new version: wait for it, then it must be exactly 1
                wait_for(f"{shard}'s active version in the control plane's metrics",
                         lambda: gauge(cp_metrics, "factpatch_shard_active_version", shard=shard,
                                       version=version_label(patch)) is not None, timeout=30)
                assert gauge(cp_metrics, "factpatch_shard_active_version", shard=shard, version=version_label(patch)) == 1
                assert gauge(cp_metrics, "factpatch_shard_routable", shard=shard) == 1
            assert gauge(gw.url, "factpatch_gateway_requests_total", version=version_label(patch)) >= 1
            assert gauge(gw.url, "factpatch_shard_routable", shard="s0") is None  # the control plane's to export
    finally:
        cl.close()
        gw.stop()
        cp.stop()

    assert rollout_pb2.RolloutState.Name(final.state) == "ROLLOUT_STATE_SUCCEEDED", final.message
    gate = final.analysis[0].gates[0]
    assert gate.canary_samples >= 5 and gate.base_samples >= 5  # the gateway process's reports, analysed

    failed = [x for x in seen if x[1] != 200]
    assert not failed, f"{len(failed)} of {len(seen)} requests failed, first: {failed[0]}"
    assert len(during_outage) >= 5, f"only {len(during_outage)} requests while the control plane was down"
    # every answer names the version that made it, through the canary's swap and the promotion's
    versions = {x[2] for x in seen}
    assert versions == {"base", patch}
    for _, _, version, shard, text in seen:
        assert (fact.new if version == patch else fact.old) in text, (version, shard, text)
