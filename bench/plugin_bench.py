"""Plugin benchmark: hot apply / revert against restarting vLLM on an edited checkpoint, measured in
one run on the same machine; decode throughput patched vs unpatched; memory held for exact revert.

    python -m bench.plugin_bench [--model DIR] [--out bench/results/plugin.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from safetensors.torch import load_file, save_file

from factpatch.core import patchfile
from factpatch.harness.shard_process import ShardServer
from factpatch.harness.signals import stop_children_on_sigterm
from tests.factories import random_patch_on


def edited_checkpoint(model_dir: Path, patch: patchfile.Patch, out: Path) -> None:
    """What an operator does today: bake the edit into a copy of the checkpoint."""
    for f in model_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    for f in model_dir.glob("*.safetensors"):
        state = load_file(str(f))
        names = [n for n in patch.names if n in state]
        if names:
            patchfile.apply_to_state_dict(state, patchfile.Patch({n: patch.factors[n] for n in names}, patch.manifest))
        save_file(state, str(out / f.name), metadata={"format": "pt"})


def decode_tps(shard: ShardServer, prompt: str, n: int = 8, tokens: int = 64) -> float:
    body = {"model": shard.model_dir, "prompt": prompt, "max_tokens": tokens, "temperature": 0.0, "ignore_eos": True}

    def one(_):
        r = httpx.post(f"{shard.url}/v1/completions", json=body, timeout=300)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as ex:
        total = sum(ex.map(one, range(n)))
    return total / (time.perf_counter() - t0)


def main() -> None:
    stop_children_on_sigterm()  # a SIGTERM stops the shards and servers this run started
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="bench/results/plugin.json")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    if a.model:
        model = Path(a.model)
    else:
        from factpatch.fixture.build import ensure_fixture

        model = ensure_fixture()
    data, patch = random_patch_on(model, {2: 0.5, 3: 0.5})
    prompt = "The refund period of Harbor Support is"
    res: dict = {"model": str(model), "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                 "device": "cuda" if torch.cuda.is_available() else "cpu"}, "patch": {"layers": [2, 3], "rank": 4}}

    with ShardServer(model) as shard:
        res["first_start_s"] = shard.startup_s
        shard.complete(prompt, max_tokens=4)  # warm
        applies, reverts, server_side = [], [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            r = shard.apply(data)
            applies.append(time.perf_counter() - t0)
            r.raise_for_status()
            server_side.append(r.json()["last_swap"])
            held = r.json()["bytes_held"]
            t0 = time.perf_counter()
            shard.revert().raise_for_status()
            reverts.append(time.perf_counter() - t0)
        res["apply_s_median"] = statistics.median(applies)
        res["revert_s_median"] = statistics.median(reverts)
        res["apply_server_side_median"] = {k: statistics.median(s[k] for s in server_side) for k in server_side[0]}
        res["bytes_held_patched"] = held
        res["bytes_held_after_revert"] = shard.status().json()["bytes_held"]
        res["checkpoint_bytes"] = sum(f.stat().st_size for f in model.glob("*.safetensors"))

        base_tps, patched_tps = [], []
        for i in range(6):  # interleaved, alternating which side goes first, so drift hits both alike
            order = ("base", "patched") if i % 2 == 0 else ("patched", "base")
            for side in order:
                if side == "patched":
                    shard.apply(data).raise_for_status()
                    patched_tps.append(decode_tps(shard, prompt))
                    shard.revert().raise_for_status()
                else:
                    base_tps.append(decode_tps(shard, prompt))
        ratios = [p / b for p, b in zip(patched_tps, base_tps)]
        res["decode_tokens_per_s"] = {"base": statistics.median(base_tps), "patched": statistics.median(patched_tps)}
        res["decode_throughput_ratio_patched_over_base"] = statistics.median(ratios)
        res["decode_throughput_ratios_per_pair"] = ratios
        t0 = time.perf_counter()
    # The alternative: stop the server, bake the edit into a checkpoint copy, start vLLM on it.
    stop_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="fp-edited-") as tmp:
        t0 = time.perf_counter()
        edited_checkpoint(model, patch, Path(tmp))
        bake_s = time.perf_counter() - t0
        with ShardServer(tmp) as shard2:
            t1 = time.perf_counter()
            shard2.complete(prompt, max_tokens=1)
            first_s = time.perf_counter() - t1
            res["restart_s"] = {"stop": stop_s, "bake_checkpoint": bake_s, "start_to_healthy": shard2.startup_s,
                                "first_completion": first_s}
    restart = stop_s + bake_s + res["restart_s"]["start_to_healthy"] + first_s
    res["restart_total_s"] = restart
    res["restart_over_apply"] = restart / res["apply_s_median"]
    res["restart_over_revert"] = restart / res["revert_s_median"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    json.dump(res, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
