"""Monitor engine cost: one hyperscan streaming database against a loop of Python regexes, with 10,
1,000 and 10,000 monitors, per streamed response, measured in one run.

    python -m bench.monitor_bench [--out bench/results/monitors.json]

A response is ~60 tokens of text delivered in token-sized chunks. The hyperscan engine scans each
chunk as it arrives; the Python baseline keeps the text and runs every compiled regex over it once
at the end (cheaper than rescanning per chunk, so the comparison favours the baseline).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import time
from pathlib import Path

from factpatch.server.monitors.config import LITERAL, REGEX, Monitor
from factpatch.server.monitors.engine import CompiledMonitors

WORDS = "the refund period of harbor support is days within customers can ask for a window policy".split()


def monitors(n: int, rng: random.Random) -> list[Monitor]:
    out = []
    for i in range(n):
        token = f"v{i:05d}"
        if i % 4 == 0:
            out.append(Monitor(f"re-{i}", REGEX, rf"\b{token}[0-9]{{1,3}} ?(days|weeks)\b"))
        else:
            out.append(Monitor(f"lit-{i}", LITERAL, f"{token} days"))
    return out


def responses(count: int, n_monitors: int, rng: random.Random) -> list[list[str]]:
    out = []
    for _ in range(count):
        toks = [rng.choice(WORDS) for _ in range(60)]
        for _ in range(2):  # a couple of real hits per response
            toks[rng.randrange(60)] = f"v{rng.randrange(n_monitors):05d} days"
        out.append([" " + t for t in toks])
    return out


def run_hyperscan(c: CompiledMonitors, resp: list[list[str]]) -> tuple[float, list[set[str]]]:
    found = []
    t0 = time.perf_counter()
    for chunks in resp:
        s = c.scanner()
        for ch in chunks:
            s.feed(ch)
        found.append(s.close())
    dt = time.perf_counter() - t0
    return dt, [{c.monitors[i].name for i in f} for f in found]


def run_python(ms: list[Monitor], resp: list[list[str]]) -> tuple[float, list[set[str]]]:
    compiled = [(m.name, re.compile(m.expression(), re.IGNORECASE if m.ignore_case else 0)) for m in ms]
    found = []
    t0 = time.perf_counter()
    for chunks in resp:
        text = "".join(chunks)
        found.append({name for name, rx in compiled if rx.search(text)})
    return time.perf_counter() - t0, found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/monitors.json")
    ap.add_argument("--responses", type=int, default=300)
    args = ap.parse_args()
    rng = random.Random(0)
    rows = []
    for n in (10, 1_000, 10_000):
        ms = monitors(n, rng)
        t0 = time.perf_counter()
        c = CompiledMonitors(ms)
        compile_s = time.perf_counter() - t0
        resp = responses(args.responses, n, rng)
        hs_runs, py_runs = [], []
        for _ in range(3):  # interleaved, best of three: the machine is shared
            dt, hs_found = run_hyperscan(c, resp)
            hs_runs.append(dt)
            dt, py_found = run_python(ms, resp)
            py_runs.append(dt)
        assert hs_found == py_found, "the engines disagree"
        hs_us = min(hs_runs) / len(resp) * 1e6
        py_us = min(py_runs) / len(resp) * 1e6
        rows.append({"monitors": n, "compile_s": round(compile_s, 3), "hyperscan_us_per_response": round(hs_us, 1),
                     "python_re_us_per_response": round(py_us, 1), "speedup": round(py_us / hs_us, 1),
                     "chunks_per_response": 60, "matches_agree": True})
        print(json.dumps(rows[-1]))
    out = {"bench": "monitor engine: hyperscan stream vs Python re loop", "machine": platform.machine(),
           "python": platform.python_version(), "responses": args.responses, "rows": rows,
           "note": "best of 3 interleaved runs on a shared 2-core machine; per response = 60 token chunks"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
