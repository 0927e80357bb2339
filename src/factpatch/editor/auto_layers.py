"""`--layers auto`: choose the layers to edit from a causal trace and a short validation sweep.

1. Trace a slice of the edits (their current answers) and read the MLP indirect effect at the subject's
   last token per layer: the layers whose MLP carries the fact are where ROME and MEMIT should write.
2. Turn that profile into a few candidates around its peak: for ROME the peak layer and its
   neighbours, for MEMIT the two strongest windows of each of a few lengths that hold the peak or
   start just after it.
3. Edit a held-out slice of the edits with each candidate and measure efficacy and specificity
   (neighbour facts keep their answers). Keep the candidates within one point of the best efficacy,
   then take the best specificity; generalization, fewer layers and the trace break ties.

The choice and every number behind it go into the patch manifest's `hparams["layer_choice"]`.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .layers import ONE_LAYER, LayerError
from .stats import second_moments
from .trace import TraceError, TraceSettings, items_for_edits, trace

AUTO = "auto"


@dataclass(frozen=True)
class AutoParams:
    trace_prompts: int = 6  # edits traced (the profile is an average; a few prompts suffice)
    trace_samples: int = 3  # noise samples per traced prompt
    val_edits: int = 8  # edits in the held-out validation slice
    rome_candidates: int = 3  # single layers tried for ROME
    memit_lengths: tuple[int, ...] = (1, 2, 3, 5, 8)  # window lengths tried for MEMIT (≤ half the depth)
    windows_per_length: int = 2
    efficacy_tolerance: float = 0.01


class ChosenLayers(list):
    """The chosen layer list, carrying the report of how it was chosen."""

    def __init__(self, layers: list[int], report: dict[str, Any]):
        super().__init__(layers)
        self.report = report


def candidates(profile: list[float], method: str, params: AutoParams = AutoParams(),
               editable: set[int] | None = None) -> list[list[int]]:
    """Layer sets to validate, best trace score first; only layers in `editable` (default: all), since an
    MLP held at zero has no keys to write through (the pipeline refuses it)."""
    n = len(profile)
    ok = set(range(n)) if editable is None else set(editable)
    p = [max(0.0, x) if l in ok else 0.0 for l, x in enumerate(profile)]
    peak = max(sorted(ok), key=lambda l: (p[l], -l))
    if method in ONE_LAYER:
        # The peak and the layers just after and before it: the peak is not always the best place to
        # write (a first-layer peak is mostly the token embedding), and away from it the profile is noise.
        order = [peak + d for d in (0, 1, -1, 2, -2) if peak + d in ok]
        return [[l] for l in order[: params.rome_candidates]]
    out = []
    for length in params.memit_lengths:
        if length > max(1, (n + 1) // 2):
            continue
        # Windows that hold the peak or start just after it; the strongest by trace score first.
        starts = [s for s in range(n - length + 1) if s <= peak + 1 and s + length - 1 >= min(peak, n - 1)
                  and ok.issuperset(range(s, s + length))]
        starts.sort(key=lambda s: (-sum(p[s : s + length]), s))
        out += [list(range(s, s + length)) for s in starts[: params.windows_per_length]]
    return out


def _slices(n: int, params: AutoParams, seed: int) -> tuple[list[int], list[int]]:
    """Validation and trace slices of the edits; they share edits only when there are too few."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = sorted(order[: params.val_edits])
    rest = order[params.val_edits :]
    traced = sorted(rest[: params.trace_prompts]) if rest else sorted(order[: params.trace_prompts])
    return val, traced


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


def _rank_key(row: dict[str, Any], best_eff: float, tol: float):
    m = row["metrics"]
    spec = m.get("neighbours_unchanged")
    gen = m.get("generalization")
    return (
        m["efficacy"] >= best_eff - tol,
        spec if spec is not None else 0.0,
        gen if gen is not None else 0.0,
        -len(row["layers"]),
        row["trace_score"],
    )


def choose_layers(loaded, edits, opts, corpus, validate: Callable[[list, list[int]], dict[str, Any]],
                  params: AutoParams = AutoParams()) -> ChosenLayers:
    """Trace, sweep the candidates on a held-out slice, return the best layers with the report.

    `validate(edits, layers)` edits with those layers and returns the patch's metrics (the pipeline's
    edit + evaluate); `corpus` feeds the covariance statistics every candidate layer needs.
    """

    t0 = time.perf_counter()
    adapter, tok = loaded.adapter, loaded.tok
    val_idx, trace_idx = _slices(len(edits), params, opts.seed)
    settings = TraceSettings(samples=params.trace_samples, seed=opts.seed, kinds=("mlp",))
    with _progress(opts.progress) as bar:
        task = bar.add_task("causal trace", total=None) if bar else None
        try:
            items = items_for_edits(adapter, tok, [edits[i] for i in trace_idx])
            result = trace(adapter, tok, items, settings,
                           on_progress=(lambda d, t: bar.update(task, completed=d, total=t)) if bar else None)
        except TraceError as e:  # the pipeline reports a LayerError as bad input, exit code 2
            raise LayerError(f"--layers auto: {e}") from None
        profile = result.subject_last_profile("mlp")
        t_trace = time.perf_counter() - t0

        cands = candidates(profile, opts.layer_kind, params, set(adapter.editable_layers()))
        val = [edits[i] for i in val_idx]
        # One corpus pass for every candidate layer; the sweep's edits then read them from the cache.
        second_moments(adapter, tok, sorted({l for c in cands for l in c}), corpus, opts.n_samples,
                       progress=opts.progress, fingerprint=loaded.identity)
        vtask = bar.add_task("validating layer windows", total=len(cands)) if bar else None
        rows = []
        for c in cands:
            m = validate(val, c)
            keep = ("efficacy", "generalization", "neighbours_unchanged", "specificity_drop")
            rows.append({"layers": c, "trace_score": sum(max(0.0, profile[l]) for l in c),
                         "metrics": {k: m.get(k) for k in keep}})
            if bar:
                bar.update(vtask, advance=1)
    best_eff = max(r["metrics"]["efficacy"] for r in rows)
    best = max(rows, key=lambda r: _rank_key(r, best_eff, params.efficacy_tolerance))
    report = {
        "strategy": AUTO,
        "chosen": best["layers"],
        "mlp_effect_at_subject_last": profile,
        "trace": {"prompts": len(trace_idx), "samples": settings.samples, "window": result.window,
                  "noise_std": result.noise_std, "seed": settings.seed},
        "validation_edits": len(val_idx),
        "candidates": rows,
        "params": asdict(params),
        "seconds": {"trace": round(t_trace, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    return ChosenLayers(best["layers"], report)
