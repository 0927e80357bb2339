"""Causal tracing and the automatic layer choice on the fixture.

    .venv/bin/python -m bench.trace_bench

Measures, in one run on one machine: the time to trace one fact and a batch of 20 (all three kinds,
8 noise samples each, as `factpatch trace` does by default); where the MLP effect at the subject's
last token peaks; and the time of `--layers auto` next to the edit itself (ROME on one edit, MEMIT on
a batch). Writes bench/results/trace.json.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from factpatch.editor.pipeline import EditOptions, load, run_edit
from factpatch.editor.trace import TraceSettings, items_for_edits, trace
from factpatch.fixture.build import ensure_fixture
from factpatch.fixture.edit_samples import random_edits

RESULTS = Path(__file__).parent / "results" / "trace.json"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def main(n_memit: int = 20) -> None:
    torch.set_num_threads(2)
    loaded = load(ensure_fixture())
    adapter, tok = loaded.adapter, loaded.tok
    res: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "threads": torch.get_num_threads()}, "fixture": str(loaded.path)}
    edits = random_edits(loaded.world, 20, seed=51)
    items = items_for_edits(adapter, tok, edits)
    settings = TraceSettings()
    one, t1 = timed(lambda: trace(adapter, tok, items[:1], settings))
    many, t20 = timed(lambda: trace(adapter, tok, items, settings))
    profile = many.subject_last_profile("mlp")
    res["trace"] = {
        "settings": {"samples": settings.samples, "window": many.window, "kinds": list(settings.kinds)},
        "seconds_one_fact": t1,
        "seconds_20_facts": t20,
        "seconds_per_fact_in_batch": round(t20 / 20, 3),
        "mlp_effect_at_subject_last": [round(x, 4) for x in profile],
        "mlp_peak_layer": max(range(len(profile)), key=lambda l: profile[l]),
        "mean_p_clean": round(sum(p.p_clean for p in many.prompts) / 20, 4),
        "mean_p_corrupt": round(sum(p.p_corrupt for p in many.prompts) / 20, 4),
    }
    print(json.dumps(res["trace"]), flush=True)
    res["auto_vs_edit"] = {}
    for method, batch in (("rome", edits[:1]), ("memit", random_edits(loaded.world, n_memit, seed=52))):
        fixed, t_fixed = timed(lambda: run_edit(loaded, batch, EditOptions(method=method)))  # default layers
        auto, t_auto = timed(lambda: run_edit(loaded, batch, EditOptions(method=method, layers="auto")))
        choice = auto.patch.manifest["hparams"]["layer_choice"]
        res["auto_vs_edit"][method] = {
            "edits": len(batch),
            "seconds_edit_default_layers": t_fixed,
            "default_layers": list(fixed.layers),
            "seconds_edit_auto_total": t_auto,
            "seconds_auto_choice": choice["seconds"]["total"],
            "seconds_auto_trace": choice["seconds"]["trace"],
            "choice_over_edit": round(choice["seconds"]["total"] / max(1e-9, t_fixed), 2),
            "chosen": choice["chosen"],
            "candidates": choice["candidates"],
        }
        print(method, json.dumps(res["auto_vs_edit"][method]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
