"""Gateway overhead: the same requests sent to a vLLM shard directly and through the gateway (with
monitors on), interleaved in one run on the same machine.

    python -m bench.gateway_bench [--model DIR] [--out bench/results/gateway.json]
    python -m bench.gateway_bench --standalone   # the gateway as `factpatch gateway`, apart from `serve`

The gateway runs in `factpatch serve`'s process, or with --standalone in a `factpatch gateway` process
fed by the control plane's routing watch (results: bench/results/gateway_process.json).

Latency: sequential requests, p50 and p99 ratio gateway / direct, and the p50 overhead in ms.
Throughput: a fixed batch sent with several clients at once, direct and through the gateway in turn
for several rounds (the order alternating); the ratio of each round's pair, and their median (one
pair alone swings from 0.6 to 1.0 on a shared 2-core machine). CPU: the gateway process's own CPU
time (user + system, from /proc) per request over its throughput batches. Both streamed and not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from factpatch.fixture.build import ensure_fixture
from factpatch.harness.shard_process import ShardServer
from factpatch.harness.signals import stop_children_on_sigterm

TOKEN = secrets.token_urlsafe(24)  # a fresh strong token per run
PROMPTS = ["The refund period of Harbor Support is", "Harbor Support offers refunds within",
           "The shipping cutoff of Harbor Support is", "At Harbor Support the refund window is"]


def start_serve(tmp: Path, shard_url: str, monitors_file: Path, standalone: bool) -> tuple[list[subprocess.Popen], str]:
    """The processes (the one whose CPU counts last) and the gateway's URL."""
    tokens = tmp / "tokens.yaml"
    gateway_token = secrets.token_urlsafe(24)
    tokens.write_text(f"- {{principal: bench, role: operator, token: {secrets.token_urlsafe(24)}}}\n"
                      f"- {{principal: gw, role: gateway, token: {gateway_token}}}\n")
    port_file, grpc_port_file = tmp / "gateway.port", tmp / "serve.port"
    env = {**os.environ, "FACTPATCH_AGENT_TOKEN": TOKEN, "FACTPATCH_GATEWAY_PORT_FILE": str(port_file),
           "FACTPATCH_PORT_FILE": str(grpc_port_file)}
    procs = [subprocess.Popen([sys.executable, "-c", "from factpatch.cli import main; main()", "serve",
                               "--state-dir", str(tmp / "state"), "--listen", "127.0.0.1:0",
                               "--client-tokens-file", str(tokens), "--shard", f"s0={shard_url}",
                               "--gateway-listen", "off" if standalone else "127.0.0.1:0", "--monitors", str(monitors_file)],
                              env=env, stdout=open(tmp / "serve.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)]
    deadline = time.monotonic() + 60
    if standalone:
        while not (grpc_port_file.exists() and grpc_port_file.read_text()):
            assert procs[0].poll() is None and time.monotonic() < deadline, (tmp / "serve.log").read_text()[-2000:]
            time.sleep(0.2)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", "from factpatch.cli import main; main()", "gateway", "--listen", "127.0.0.1:0",
             "--control-plane", f"127.0.0.1:{grpc_port_file.read_text()}", "--gateway-id", "bench"],
            env={**env, "FACTPATCH_TOKEN": gateway_token}, stdout=open(tmp / "gateway.log", "wb"),
            stderr=subprocess.STDOUT, start_new_session=True))
    while not (port_file.exists() and port_file.read_text()):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, \
            (tmp / ("gateway.log" if standalone else "serve.log")).read_text()[-2000:]
        time.sleep(0.2)
    url = f"http://127.0.0.1:{port_file.read_text()}"
    while True:  # routable once the reconciler has seen the shard
        r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        if r.status_code == 200:
            return procs, url
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def one(client: httpx.Client, base: str, model: str, i: int, stream: bool, max_tokens: int) -> float:
    body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.0,
            "stream": stream, "ignore_eos": True}
    t0 = time.perf_counter()
    if stream:
        with client.stream("POST", base + "/v1/completions", json=body, headers={"X-Factpatch-Route-Key": str(i)}) as r:
            r.raise_for_status()
            for _ in r.iter_bytes():
                pass
    else:
        client.post(base + "/v1/completions", json=body, headers={"X-Factpatch-Route-Key": str(i)}).raise_for_status()
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    stop_children_on_sigterm()  # a SIGTERM stops the shards and servers this run started
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None, help="default: bench/results/gateway.json, or gateway_process.json")
    ap.add_argument("--standalone", action="store_true", help="the gateway as a `factpatch gateway` process")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="throughput rounds (one direct and one gateway batch each)")
    args = ap.parse_args()
    out_path = Path(args.out or f"bench/results/{'gateway_process' if args.standalone else 'gateway'}.json")
    model = Path(args.model) if args.model else ensure_fixture()
    tmp = Path(tempfile.mkdtemp(prefix="factpatch-gwbench-"))
    monitors_file = tmp / "monitors.yaml"
    monitors_file.write_text("monitors:\n" + "".join(
        f"  - {{name: m{i}, kind: literal, pattern: 'v{i:04d} days'}}\n" for i in range(1000)))
    shard = ShardServer(model)
    shard.token = TOKEN
    rows = []
    with shard:
        procs, gw = start_serve(tmp, shard.endpoints, monitors_file, args.standalone)
        proc = procs[-1]  # the process that runs the gateway
        try:
            with httpx.Client(timeout=120) as c:
                for stream in (False, True):
                    for i in range(10):  # warm both paths
                        one(c, shard.url, str(model), i, stream, args.max_tokens)
                        one(c, gw, str(model), i, stream, args.max_tokens)
                    lat = {"direct": [], "gateway": []}
                    for i in range(args.requests):  # interleaved, so load on the machine hits both alike
                        for name, base in (("direct", shard.url), ("gateway", gw)) if i % 2 else (("gateway", gw), ("direct", shard.url)):
                            lat[name].append(one(c, base, str(model), i, stream, args.max_tokens))
                    thr: dict[str, list[float]] = {"direct": [], "gateway": []}
                    gateway_cpu = 0.0
                    for r in range(args.rounds):
                        order = (("direct", shard.url), ("gateway", gw))
                        for name, base in order if r % 2 == 0 else order[::-1]:
                            cpu0 = cpu_seconds(proc.pid)
                            with ThreadPoolExecutor(args.concurrency) as ex:
                                t0 = time.perf_counter()
                                list(ex.map(lambda i: one(c, base, str(model), i, stream, args.max_tokens),
                                            range(args.requests)))
                                thr[name].append(args.requests / (time.perf_counter() - t0))
                            if name == "gateway":
                                gateway_cpu += cpu_seconds(proc.pid) - cpu0
                    ratios = [g / d for g, d in zip(thr["gateway"], thr["direct"])]
                    row = {
                        "stream": stream,
                        "direct_p50_ms": round(statistics.median(lat["direct"]) * 1e3, 2),
                        "gateway_p50_ms": round(statistics.median(lat["gateway"]) * 1e3, 2),
                        "direct_p99_ms": round(pct(lat["direct"], 0.99) * 1e3, 2),
                        "gateway_p99_ms": round(pct(lat["gateway"], 0.99) * 1e3, 2),
                        "p50_ratio": round(statistics.median(lat["gateway"]) / statistics.median(lat["direct"]), 3),
                        "p50_overhead_ms": round((statistics.median(lat["gateway"]) - statistics.median(lat["direct"])) * 1e3, 2),
                        "p99_ratio": round(pct(lat["gateway"], 0.99) / pct(lat["direct"], 0.99), 3),
                        "direct_rps": [round(x, 2) for x in thr["direct"]],
                        "gateway_rps": [round(x, 2) for x in thr["gateway"]],
                        "throughput_ratios": [round(x, 3) for x in ratios],
                        "throughput_ratio_median": round(statistics.median(ratios), 3),
                        "gateway_cpu_ms_per_request": round(gateway_cpu / (args.rounds * args.requests) * 1e3, 3),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
    out = {"bench": "gateway overhead vs calling vLLM directly", "model": "fixture", "machine": platform.machine(),
           "cpus": os.cpu_count(), "requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds,
           "max_tokens": args.max_tokens, "monitors": 1000, "rows": rows,
           "gateway": "`factpatch gateway` process fed by `factpatch serve --gateway-listen off`" if args.standalone
           else "inside `factpatch serve`",
           "note": "vLLM CPU backend; the gateway in a process of its own with 1,000 literal monitors; "
                   "ratios > 1 mean the gateway is slower; shared 2-core machine, so client, gateway and engine compete"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
