"""Editor speed against the reference implementation's way of computing edits, in one run on the fixture.

    .venv/bin/python -m bench.editor_bench [--quick]

The reference implementation of ROME and MEMIT (kmeng01/memit) optimises each edit's value on its own,
for its published number of steps, then solves. It is not part of the project: its loop and step counts
are rebuilt here on factpatch's own code, so both ways run on the same model, machine, covariance, keys
and evaluator, and each ratio compares one piece of work organised two ways:

- ROME, single edits: factpatch's settings one at a time and all in one batch (`run_single_edits`),
  against the reference's value settings one at a time (`REFERENCE_ROME`).
- MEMIT, batches of 10 and 100 distinct subjects: factpatch (every edit's value optimised in one batch)
  against the same settings with one edit's value at a time (the reference's loop), and against the
  reference's value settings in that loop (`REFERENCE_MEMIT`); all three then solve the same way.
- `--layers auto`: an edit that traces and sweeps against one that reads the stored choice.
- The covariance pass, uncached, and MEMIT-100's quality by the number of covariance texts.

Every edit is given in one phrasing (what the reference takes) and measured on the held-out phrasings
of its relation. Writes bench/results/editor.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from factpatch.editor import layers as layer_choice
from factpatch.editor import memit as memit_module
from factpatch.editor import model_defaults
from factpatch.editor.corpus import fixture_corpus
from factpatch.editor.memit import MemitParams
from factpatch.editor.pipeline import (
    EditOptions,
    evaluate_each,
    evaluate_patch,
    heldout_texts,
    load,
    run_edit,
    run_single_edits,
)
from factpatch.editor.rome import RomeParams
from factpatch.editor.stats import second_moments
from factpatch.editor.values import ValueParams, ValueResult
from factpatch.fixture.build import REPORT_FILE, ensure_fixture

from .editor_scale import chain_edits

RESULTS = Path(__file__).parent / "results" / "editor.json"

# The reference's value optimisation, from its published hyperparameter files as editor/hparams holds
# them: ROME on GPT-2 XL (20 steps, lr 0.5, weight decay 0.5 in the code's form, clamp 4 × the MLP output,
# KL 0.0625) and MEMIT on GPT-J (25 steps, lr 0.5, the same decay, clamp 0.75 × the layer's output); both
# stop an edit once its target's NLL is below 0.05, and both read each edit behind the empty context and
# five generated ones (as factpatch's MEMIT does).
_GPT2_XL = model_defaults.load_file(model_defaults.HPARAMS_DIR / "gpt2-xl.json")
_GPT_J = model_defaults.load_file(model_defaults.HPARAMS_DIR / "gpt-j-6b.json")
REFERENCE_ROME = RomeParams(value=replace(ValueParams(), **_GPT2_XL.rome.value.given()), n_prefixes=5,
                            paraphrase_keys=False, equal_gain_ridge=None, retry_lr=None, last_token_fallback=False)
REFERENCE_MEMIT_VALUE = replace(ValueParams(), **_GPT_J.memit.value.given())

_T0 = time.perf_counter()


def step(what: str) -> None:
    print(f"[{(time.perf_counter() - _T0) / 60:5.1f} min] {what}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def round_metrics(m: dict) -> dict:
    """The metrics, rounded; the edits not taken by count (`factpatch eval` lists them by name)."""
    out = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items() if k != "per_edit"}
    if "edits_not_taken" in out:
        out["edits_not_taken"] = len(out["edits_not_taken"])
    return out


def _keys(m: dict) -> dict:
    keep = ("efficacy", "efficacy_prob", "generalization", "neighbours_unchanged", "ppl_drift")
    return {k: (round(m[k], 4) if isinstance(m.get(k), float) else m.get(k)) for k in keep}


@contextlib.contextmanager
def values_one_edit_at_a_time():
    """MEMIT's value optimisation called once per edit, as the reference computes each edit's z alone."""
    batched = memit_module.optimise_values

    def loop(adapter, tok, layer, rows_per_edit, hp, progress=None, **kw):
        if kw.get("batch_directions") is not None or kw.get("directions") is not None:
            raise ValueError("the reference loop is plain MEMIT's, with nothing shared between edits")
        parts = [batched(adapter, tok, layer, [r], hp, **kw) for r in rows_per_edit]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])
        return ValueResult(cat("deltas"), cat("init_residual"), cat("final_nll"), cat("final_kl"), cat("steps_taken"),
                           cat("final_prompt_nll_max"), cat("final_prompt_missed"), [])

    memit_module.optimise_values = loop
    try:
        yield
    finally:
        memit_module.optimise_values = batched


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def rome_section(loaded, heldout, n: int) -> dict:
    edits = chain_edits(loaded.world, n, seed=2)
    res: dict = {"edits": n}
    ways = (("factpatch_one_at_a_time", RomeParams(), False), ("factpatch_batched", RomeParams(), True),
            ("reference_steps_one_at_a_time", REFERENCE_ROME, False))
    for name, rome, batched in ways:
        step(f"ROME: {n} single edits, {name}")
        opts = EditOptions(method="rome", layers="default", rome=rome)
        if batched:
            results, secs = timed(lambda: run_single_edits(loaded, edits, opts))
            patches = [r.patch for r in results]
        else:
            patches, secs = [], 0.0
            for e in edits:
                r, s = timed(lambda: run_edit(loaded, [e], opts))
                patches.append(r.patch)
                secs += s
        quality = evaluate_each(loaded, patches, edits, heldout)["metrics"]
        res[name] = {"seconds": round(secs, 2), "seconds_per_edit": round(secs / n, 3), "quality": _keys(quality)}
    one = res["factpatch_one_at_a_time"]["seconds"]
    res["speedup"] = {"batched_vs_one_at_a_time": round(one / res["factpatch_batched"]["seconds"], 2),
                      "one_at_a_time_vs_reference_steps": round(res["reference_steps_one_at_a_time"]["seconds"] / one, 3),
                      "batched_vs_reference_steps": round(res["reference_steps_one_at_a_time"]["seconds"]
                                                          / res["factpatch_batched"]["seconds"], 2)}
    return res


def memit_section(loaded, heldout, n: int) -> dict:
    edits = chain_edits(loaded.world, n, seed=3)
    res: dict = {"edits": n}
    ways = (("factpatch", MemitParams(), False), ("factpatch_values_one_at_a_time", MemitParams(), True),
            ("reference_steps_one_at_a_time", replace(MemitParams(), value=REFERENCE_MEMIT_VALUE), True))
    for name, hp, loop in ways:
        step(f"MEMIT: a batch of {n}, {name}")
        with values_one_edit_at_a_time() if loop else contextlib.nullcontext():
            r, secs = timed(lambda: run_edit(loaded, edits, EditOptions(method="memit", layers="default", memit=hp)))
        quality = evaluate_patch(loaded, r.patch, edits, heldout)["metrics"]
        res[name] = {"layers": list(r.layers), "seconds": round(secs, 2), "seconds_per_edit": round(secs / n, 3),
                     "quality": _keys(quality)}
    fp = res["factpatch"]["seconds"]
    res["speedup"] = {"vs_values_one_at_a_time": round(res["factpatch_values_one_at_a_time"]["seconds"] / fp, 2),
                      "vs_reference_steps_one_at_a_time": round(res["reference_steps_one_at_a_time"]["seconds"] / fp, 2)}
    return res


def auto_layers_section(loaded, heldout) -> dict:
    edits = chain_edits(loaded.world, 1, seed=5)
    # every candidate layer's statistics cached first, as any later edit finds them: the traced run
    # measures the trace and the sweep, not a first covariance pass
    second_moments(loaded.adapter, loaded.tok, loaded.adapter.editable_layers(), fixture_corpus(loaded.world, "train"),
                   None, fingerprint=loaded.identity)
    out = {}
    for name, cached in (("traced", False), ("stored_choice", True)):
        step(f"--layers auto, one ROME edit, {name}")
        r, secs = timed(lambda: run_edit(loaded, edits, EditOptions(method="rome", layers="auto", layer_cache=cached)))
        out[name] = {"seconds": round(secs, 2), "layers": list(r.layers),
                     "cache_hit": r.patch.manifest["hparams"]["layer_choice"]["cache"]["hit"]}
    out["speedup"] = round(out["traced"]["seconds"] / out["stored_choice"]["seconds"], 2)
    return out


def covariance_section(loaded, heldout, quick: bool) -> dict:
    world = loaded.world
    corpus = fixture_corpus(world)
    layers = sorted(set(layer_choice.default_layers(loaded.adapter.n_layers, "memit", loaded.defaults))
                    | set(layer_choice.default_layers(loaded.adapter.n_layers, "rome", loaded.defaults)))
    step(f"covariance statistics, layers {layers}, uncached")
    _, secs = timed(lambda: second_moments(loaded.adapter, loaded.tok, layers, corpus, None, use_cache=False, progress=True))
    res = {"layers": layers, "texts": len(corpus.texts), "seconds": round(secs, 2)}
    edits = chain_edits(world, 100, seed=1)
    sweep = {}
    for n in ([250, None] if quick else [250, 1000, None]):
        step(f"MEMIT 100 with covariance from {n or 'all'} texts")
        r = run_edit(loaded, edits, EditOptions(method="memit", layers="default", n_samples=n))
        sweep[str(n or len(corpus.texts))] = round_metrics(evaluate_patch(loaded, r.patch, edits, heldout)["metrics"])
    res["memit100_quality_by_samples"] = sweep
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load(ensure_fixture())
    heldout = heldout_texts(loaded, None)
    res: dict = {
        "measured_at": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform()},
        "fixture": str(loaded.path),
        "weights_fingerprint": json.loads((loaded.path / REPORT_FILE).read_text())["weights_fingerprint"],
        "reference": {"rome_value": REFERENCE_ROME.value.__dict__, "memit_value": REFERENCE_MEMIT_VALUE.__dict__,
                      "source": "kmeng01/memit hparams/ROME/gpt2-xl.json and hparams/MEMIT/EleutherAI_gpt-j-6B.json"},
    }
    res["covariance"] = covariance_section(loaded, heldout, args.quick)
    res["rome"] = rome_section(loaded, heldout, 5 if args.quick else 20)
    res["memit"] = {str(n): memit_section(loaded, heldout, n) for n in ([10] if args.quick else [10, 100])}
    res["auto_layers"] = auto_layers_section(loaded, heldout)
    res["peak_rss_mib"] = round(peak_rss_mib(), 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: res[k] for k in ("rome", "memit", "auto_layers")}, indent=2, default=str))


if __name__ == "__main__":
    main()
