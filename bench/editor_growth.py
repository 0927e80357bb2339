"""How an edit's time and memory grow with the batch: one MEMIT batch of n distinct-subject edits, one
phrasing each, for n in --sizes, each in a process of its own so its peak memory is its own.

    .venv/bin/python -m bench.editor_growth [--sizes 10 100 400] [--methods memit memit-joint]
    .venv/bin/python -m bench.editor_growth --budget-share 0.5 [--sizes 10 100] [--methods memit]

Writes bench/results/editor_growth.json: per method and size the seconds of the edit (the corpus
statistics computed beforehand and cached on disk, as a second edit finds them), the seconds per edit
and their ratio to the smallest batch's, the process's peak resident memory against what it held after
loading the model and one forward pass, the checkpoint's bytes, and `factpatch eval`'s figures for the
batch (efficacy greedy / by probability, held-out paraphrases, neighbours unchanged, perplexity drift).
The fixture's world has 420 subjects, so a batch of distinct subjects stops there. The batches run
with `--memory-budget none` (passes of up to 2,048 rows), to show what the batch alone costs.

With --budget-share S, each batch runs twice, with no budget and with `--memory-budget` S × the
checkpoint's bytes, and bench/results/editor_memory.json gets both: the edit's peak as a ratio to the
checkpoint ((checkpoint + the edit's own peak) / checkpoint: the model resident once, as loaded in
its stored dtype, plus what the edit adds) and the budgeted run's seconds against the unbounded one's.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "editor_growth.json"
BUDGET_RESULTS = Path(__file__).parent / "results" / "editor_memory.json"
METHODS = ("memit", "memit-joint")


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(method: str, n: int, budget_share: float | None = None) -> dict:
    """One batch in this process (run through `--one`)."""
    from factpatch.editor.memit import MemitParams
    from factpatch.editor.pipeline import EditOptions, evaluate_patch, heldout_texts, load, run_edit
    from factpatch.fixture.build import ensure_fixture

    from .editor_scale import chain_edits

    fixture = ensure_fixture()
    loaded = load(fixture)
    edits = chain_edits(loaded.world, n, seed=0)
    memit = MemitParams.joint() if method == "memit-joint" else MemitParams()
    ckpt_bytes = sum(p.stat().st_size for p in fixture.glob("*.safetensors"))
    budget = None if budget_share is None else int(budget_share * ckpt_bytes)
    opts = EditOptions(method="memit", memit=memit, memory_budget="none" if budget is None else budget)
    # one forward pass first: the kernels and buffers any use of the model loads are not the edit's
    loaded.model(input_ids=loaded.tok(edits[0].prompt.format(edits[0].subject), return_tensors="pt").input_ids)
    loaded_rss = _current_rss_mib()
    t0 = time.perf_counter()
    result = run_edit(loaded, edits, opts)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_mib()
    m = evaluate_patch(loaded, result.patch, edits, heldout_texts(loaded, None))["metrics"]
    ckpt_mib = ckpt_bytes / 2**20
    fingerprint = json.loads((fixture / "train_report.json").read_text()).get("weights_fingerprint")
    return {"method": method, "fixture": fingerprint, "edits": len(edits), "layers": result.layers,
            "seconds": round(seconds, 1),
            "seconds_per_edit": round(seconds / len(edits), 3),
            "memory_mib": {"after_load": round(loaded_rss, 1), "peak": round(peak, 1),
                           "edit_increment": round(peak - loaded_rss, 1), "checkpoint": round(ckpt_mib, 1),
                           "budget": None if budget is None else round(budget / 2**20, 1)},
            "peak_vs_checkpoint": round((ckpt_mib + peak - loaded_rss) / ckpt_mib, 2),
            "tokens_per_pass": result.patch.manifest["hparams"]["value"]["max_tokens_per_pass"],
            **{k: m.get(k) for k in ("efficacy", "efficacy_prob", "generalization", "neighbours_unchanged", "ppl_drift")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 400])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--budget-share", type=float, default=None,
                    help="also run each batch within this share of the checkpoint's bytes (--memory-budget)")
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "N", "SHARE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        share = None if args.one[2] == "none" else float(args.one[2])
        print(json.dumps(one(args.one[0], int(args.one[1]), share)))
        return
    # one edit first, in a process of its own: the layer's corpus statistics are computed and cached on
    # disk, so each measured batch reads them as a second edit would and its peak is the edit's own
    subprocess.run([sys.executable, "-m", "bench.editor_growth", "--one", args.methods[0], "1", "none"], check=True,
                   capture_output=True)

    def run(method: str, n: int, share: float | None) -> dict:
        out = subprocess.run([sys.executable, "-m", "bench.editor_growth", "--one", method, str(n), str(share or "none")],
                             check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)
        return json.loads(out.strip().splitlines()[-1])

    if args.budget_share is not None:
        return budget_pairs(args, run)
    runs = [run(method, n, None) for method in args.methods for n in args.sizes]
    for method in args.methods:
        mine = [r for r in runs if r["method"] == method]
        for r in mine:  # per-edit cost against the smallest batch's: above 1, the batch grows worse than linearly
            r["per_edit_vs_smallest"] = round(r["seconds_per_edit"] / mine[0]["seconds_per_edit"], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"platform": platform.platform(), "python": platform.python_version()},
                                   "fixture": runs[0]["fixture"], "runs": runs}, indent=2) + "\n")


def budget_pairs(args, run) -> None:
    """Each batch with no budget and within `args.budget_share` of the checkpoint, side by side."""
    pairs = []
    for method in args.methods:
        for n in args.sizes:
            free, bounded = run(method, n, None), run(method, n, args.budget_share)
            pairs.append({"method": method, "edits": n, "unbounded": free, "budgeted": bounded,
                          "seconds_vs_unbounded": round(bounded["seconds"] / free["seconds"], 2)})
    BUDGET_RESULTS.write_text(json.dumps({"machine": {"platform": platform.platform(), "python": platform.python_version()},
                                          "fixture": pairs[0]["unbounded"]["fixture"], "budget_share": args.budget_share,
                                          "pairs": pairs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
