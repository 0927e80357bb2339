"""Which layers to edit by default: a small sweep on the fixture.

    .venv/bin/python -m bench.editor_layer_sweep

ROME at every layer (single edits from the base) and MEMIT over several windows (one batch);
writes bench/results/layer_sweep.json. The defaults in src/factpatch/editor/layers.py come from this sweep.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.editor_bench import round_metrics
from factpatch.editor.pipeline import EditOptions, evaluate_each, evaluate_patch, heldout_texts, load, run_edit
from factpatch.editor.rome import RomeParams
from factpatch.fixture.build import ensure_fixture
from factpatch.fixture.edit_samples import random_edits

RESULTS = Path(__file__).parent / "results" / "layer_sweep.json"


def main(n_rome: int = 12, n_memit: int = 60) -> None:
    torch.set_num_threads(2)
    loaded = load(ensure_fixture())
    heldout = heldout_texts(loaded, None)
    n = loaded.adapter.n_layers
    res: dict = {"fixture": str(loaded.path), "rome": {}, "memit": {}}
    rome_edits = random_edits(loaded.world, n_rome, seed=5)
    for layer in range(n):
        t = time.perf_counter()
        patches = [run_edit(loaded, [e], EditOptions(method="rome", layers=[layer], rome=RomeParams(last_token_fallback=False))).patch for e in rome_edits]
        m = evaluate_each(loaded, patches, rome_edits, heldout)["metrics"]
        res["rome"][layer] = {**round_metrics(m), "seconds": round(time.perf_counter() - t, 1)}
        print("rome", layer, res["rome"][layer], flush=True)
    memit_edits = random_edits(loaded.world, n_memit, seed=6)
    for window in ([0, 1], [0, 1, 2], [1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]):
        if window[-1] >= n:
            continue
        t = time.perf_counter()
        r = run_edit(loaded, memit_edits, EditOptions(method="memit", layers=window))
        m = evaluate_patch(loaded, r.patch, memit_edits, heldout)["metrics"]
        key = ",".join(map(str, window))
        res["memit"][key] = {**round_metrics(m), "seconds": round(time.perf_counter() - t, 1)}
        print("memit", key, res["memit"][key], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
