"""Soak: streaming clients through the gateway while a patch goes canary → promote → revert, again
and again, on two real vLLM shards of the fixture model.

    python -m bench.soak [--clients 8] [--minutes 10] [--out bench/results/soak.json]

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
import time
from pathlib import Path

import torch

from factpatch.core import patchfile
from factpatch.demo.scenario import edit_spec, questions
from factpatch.fixture.build import ensure_fixture, load_world
from factpatch.harness.load_during_change import Churn, Clients, gateway_settled, judge
from factpatch.harness.shard_process import ShardServer
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.cli.client import Client
from factpatch.server.gateway.app import GatewayConfig

RESULTS = Path(__file__).parent / "results" / "soak.json"
AGENT = secrets.token_urlsafe(24)  # fresh strong tokens per run
OPERATOR = secrets.token_urlsafe(24)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(2)

    fixture = ensure_fixture()
    world = load_world(fixture)
    from factpatch.editor.pipeline import EditOptions, load, run_edit

    patch = patchfile.to_bytes(run_edit(load(fixture), edit_spec(world).edits, EditOptions(method="memit", layers=[0, 1])).patch)
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
                while time.time() - t0 < args.minutes * 60:
                    churn.cycle(["s0", "s1"])
                    time.sleep(2)  # some steady state between cycles
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
        **verdict.to_json(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "examples"}, indent=2))


if __name__ == "__main__":
    main()
