"""ROME's input directions for a sequence of edits: C factorised once per layer and call, against a
solve from C for every edit (what each edit cost before `editor/cov_solve.py`).

    .venv/bin/python -m bench.rome_directions [--widths 1024,5632,14336] [--edits 20,20,3] [--rows 10]

For each MLP width (the fixture's 1,024; TinyLlama 1.1B's 5,632; Llama 3 8B's 14,336) a covariance C
of that size (a random positive definite matrix: the cost of a solve does not depend on its values)
and, per edit, `--rows` key rows (an edit's written contexts), the equal-gain direction computed as
ROME computes it: with a solve from C for each edit (LU in float64, as before) against
`equal_gain_direction(rows, CovSolver(C))` with one solver for the sequence. Both in one run, the same
rows; the directions are checked to agree. Writes bench/results/rome_directions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from factpatch.editor.cov_solve import CovSolver
from factpatch.editor.rome import equal_gain_direction

RESULTS = Path(__file__).parent / "results" / "rome_directions.json"


class SolvePerEdit(CovSolver):
    """What an edit's direction cost before: a solve from C (LU, float64) for every call."""

    def __call__(self, rhs: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.cov.to(torch.float64), rhs.to(torch.float64))


def covariance(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d + 64, d, generator=g)
    c = a.T @ a / (d + 64)
    return c + 1e-3 * torch.eye(d)


def one_width(d: int, n_edits: int, n_rows: int) -> dict:
    cov = covariance(d, seed=d)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randn(n_rows, d, generator=g) for _ in range(n_edits)]
    t0 = time.perf_counter()
    each = [equal_gain_direction(r, SolvePerEdit(cov), 0.1) for r in rows]
    per_edit_solve = time.perf_counter() - t0
    t0 = time.perf_counter()
    solve = CovSolver(cov)
    once = [equal_gain_direction(r, solve, 0.1) for r in rows]
    factorised_once = time.perf_counter() - t0
    worst = max(float((a - b).norm() / a.norm()) for a, b in zip(each, once))
    return {"mlp_width": d, "edits": n_edits, "rows_per_edit": n_rows,
            "seconds_solve_per_edit": round(per_edit_solve, 3), "seconds_factorised_once": round(factorised_once, 3),
            "speedup": round(per_edit_solve / factorised_once, 2),
            "seconds_per_edit_before": round(per_edit_solve / n_edits, 4),
            "seconds_per_edit_after": round(factorised_once / n_edits, 4),
            "largest_relative_difference": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="1024,5632,14336")
    ap.add_argument("--edits", default="20,20,3", help="edits per width, in the same order")
    ap.add_argument("--rows", type=int, default=10)
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    edits = [int(n) for n in args.edits.split(",")]
    if len(edits) != len(widths):
        raise SystemExit(f"--edits names {len(edits)} counts for {len(widths)} widths")
    torch.set_num_threads(os.cpu_count() or 1)
    results = []
    for d, n in zip(widths, edits):
        print(f"width {d}: {n} edits ...", flush=True)
        r = one_width(d, n, args.rows)
        print(f"  {r['seconds_solve_per_edit']} s solving from C per edit, {r['seconds_factorised_once']} s "
              f"factorised once: {r['speedup']}x (directions agree to {r['largest_relative_difference']:.1e})", flush=True)
        results.append(r)
    RESULTS.write_text(json.dumps({
        "what": "ROME's equal-gain directions for a sequence of edits: C factorised once against a solve per edit",
        "created": time.strftime("%Y-%m-%d"), "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                                          "processor": platform.processor() or platform.machine()},
        "results": results}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
