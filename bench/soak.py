"""Soak: streaming clients through the gateway while a patch goes canary → promote → revert, again
and again, on two real vLLM shards of the fixture model.

    python -m bench.soak [--clients 8] [--min-swaps 100] [--min-requests 10000] [--minutes 30] [--out …]

It runs until both the swaps and the requests reach their floors (`--minutes` caps it; a run that
stops at the cap says so in `reached_floors`). It also stops when a shard's engine stalls: requests
running and no token generated for `--stall-seconds` (read from vLLM's own /metrics), and records it.

Every response is checked against the exact answer of the version its header names (see
src/factpatch/harness/load_during_change.py): the figures are requests sent, failed, mismatched (mixed or mis-tagged), and
p50/p99 latency during swaps against steady state, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from factpatch.core import patchfile
from factpatch.demo.scenario import edit_spec, questions
from factpatch.fixture.build import ensure_fixture, load_world
from factpatch.harness.load_during_change import Churn, Clients, gateway_settled, judge
from factpatch.harness.shard_process import ShardServer
from factpatch.harness.signals import stop_children_on_sigterm
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.cli.client import Client
from factpatch.server.gateway.app import GatewayConfig

RESULTS = Path(__file__).parent / "results" / "soak.json"
AGENT = secrets.token_urlsafe(24)  # fresh strong tokens per run
OPERATOR = secrets.token_urlsafe(24)


def _engine_counters(url: str) -> tuple[float, float]:
    """(requests running, tokens generated so far) from a shard's vLLM /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    running = tokens = 0.0
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in fam.samples:
            if s.name == "vllm:num_requests_running":
                running += s.value
            elif s.name == "vllm:generation_tokens_total":
                tokens += s.value
    return running, tokens


class StallWatch:
    """Polls every shard's engine: requests running and its token count unchanged for `seconds` is a
    stall (the engine stopped stepping), recorded once with when and where."""

    def __init__(self, urls: dict[str, str], seconds: float):
        self.urls, self.seconds, self.t0 = urls, seconds, time.time()
        self.stalled: dict | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        last: dict[str, tuple[float, float]] = {}  # shard -> (tokens, since)
        while not self._stop.wait(5) and self.stalled is None:
            for name, url in self.urls.items():
                try:
                    running, tokens = _engine_counters(url)
                except httpx.HTTPError:
                    continue
                seen, since = last.get(name, (-1.0, time.time()))
                if tokens != seen or running == 0:
                    last[name] = (tokens, time.time())
                elif time.time() - since >= self.seconds:
                    self.stalled = {"shard": name, "after_s": round(since - self.t0, 1), "requests_running": running,
                                    "no_token_for_s": round(time.time() - since, 1)}
                    print(f"stall: {self.stalled}", flush=True)


def main() -> None:
    stop_children_on_sigterm()  # a SIGTERM stops the shards and servers this run started
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--min-swaps", type=int, default=100)
    ap.add_argument("--min-requests", type=int, default=10_000)
    ap.add_argument("--minutes", type=float, default=30.0, help="the longest it runs, floors reached or not")
    ap.add_argument("--stall-seconds", type=float, default=90.0,
                    help="a shard with requests running and no new token this long counts as stalled")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(2)

    fixture = ensure_fixture()
    world = load_world(fixture)
    from factpatch.editor.pipeline import EditOptions, load, run_edit

    patch = patchfile.to_bytes(run_edit(load(fixture), edit_spec(world).edits, EditOptions(method="memit", layers="default", progress=False)).patch)
    prompts = [q.prompt for q in questions(world)]
    args_vllm = ["--max-model-len", "128", "--dtype", "float32", "--seed", "0"]
    s0, s1 = ShardServer(fixture, vllm_args=args_vllm), ShardServer(fixture, vllm_args=args_vllm)
    for s in (s0, s1):
        s.token = AGENT
    with tempfile.TemporaryDirectory() as tmp, s0, s1:
        tokens = Path(tmp) / "tokens.yaml"
        tokens.write_text(f"- {{principal: soak, role: operator, token: {OPERATOR}}}\n")
        srv = ControlPlaneServer(ServeConfig(
            state_dir=Path(tmp) / "state", listen="127.0.0.1:0", tokens_file=tokens, agent_token=AGENT,
            reconcile_interval=0.2, shards={"s0": s0.endpoints, "s1": s1.endpoints}, gateway=GatewayConfig(listen="127.0.0.1:0")))
        srv.start()
        cl = Client(f"127.0.0.1:{srv.port}", OPERATOR)
        url = f"http://127.0.0.1:{srv.gateway.port}"

        try:
            digest = cl.push(patch).digest
            churn = Churn(cl, digest, ["s0"], 50, gateway_settled(srv.gateway.router))
            refs = churn.references(url, str(fixture), prompts, ["s0", "s1"])

            t0 = time.time()
            with Clients(url, str(fixture), prompts, n=args.clients) as clients:
                time.sleep(5)
                watch = StallWatch({"s0": s0.url, "s1": s1.url}, args.stall_seconds)
                while time.time() - t0 < args.minutes * 60 and not watch.stalled:
                    churn.cycle(["s0", "s1"])
                    time.sleep(2)  # some steady state between cycles
                    sent = len(clients.outcomes)
                    print(f"{time.time() - t0:6.0f} s  swaps {len(churn.windows):4d}/{args.min_swaps}  "
                          f"requests {sent:6d}/{args.min_requests}", flush=True)
                    if len(churn.windows) >= args.min_swaps and sent >= args.min_requests:
                        break
            verdict = judge(clients.outcomes, refs, churn.windows)
        finally:
            cl.close()
            srv.stop(0)

    out = {
        "machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version()},
        "clients": args.clients,
        "seconds": round(time.time() - t0, 1),
        "cycles": churn.cycles,
        "swaps": len(churn.windows),
        "stalled": watch.stalled,
        "reached_floors": len(churn.windows) >= args.min_swaps and verdict.sent >= args.min_requests,
        **verdict.to_json(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "examples"}, indent=2))


if __name__ == "__main__":
    main()
