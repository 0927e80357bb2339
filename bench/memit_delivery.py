"""Where a MEMIT batch's edits are lost: in the values, or in the update that writes them.

    .venv/bin/python -m bench.memit_delivery [--edits 100] [--seed 0] [--methods memit memit-joint]
                                             [--alphas 1 1.25 1.5 2 3]

One batch of distinct-subject edits, one phrasing each (`editor_scale.chain_edits`), on the fixture:

- plain MEMIT's values δ (found at the subject's last token of the edited layer), each added there on
  the base model with no update at all, against the patch written from the same values: prompts and
  held-out phrasings answering the new value, split by whether the prompt and the held-out phrasing
  put the subject first;
- the keys: cosine of a subject's keys in its prompt and its held-out phrasings, raw and whitened by
  the corpus covariance (kᵀC⁻¹k'), of different subjects' keys, and kᵀC⁻¹k;
- the written ΔW scaled by each α after the solve: `factpatch eval`'s efficacy, held-out phrasings and
  neighbours, for each method: how much more of each δ buys, and what it costs;
- how much of the values the solve can write, whatever their arrangement: the share of a pattern of
  values across the edits that Δ = R Kᵀ(λC + KKᵀ)⁻¹ delivers at their keys is set by the eigenvalues of
  G(λI + G)⁻¹, G = KᵀC⁻¹K over the batch's key rows. Values aligned with the keys' structure (EAMET,
  Dai et al. 2025) gain only where that spectrum is spread: its mean is what unaligned values get, its
  top what the best arrangement could.

Writes bench/results/memit_delivery.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "memit_delivery.json"


@contextlib.contextmanager
def recorded_values(memit_module):
    """Records each `optimise_values` result MEMIT computes (the values before the solve spreads them)."""
    seen: list = []
    original = memit_module.optimise_values

    def recording(adapter, tok, layer, *args, **kwargs):
        result = original(adapter, tok, layer, *args, **kwargs)
        seen.append((layer, result.deltas.detach().clone()))
        return result

    memit_module.optimise_values = recording
    try:
        yield seen
    finally:
        memit_module.optimise_values = original


def _answers(loaded, items) -> torch.Tensor:
    from factpatch.editor.scoring import score_targets

    return score_targets(loaded.adapter, loaded.tok, items).greedy.float()


def _with_value_added(loaded, layer: int, item, delta: torch.Tensor) -> float:
    """Whether `item` answers its target with `delta` added to the MLP output at its subject's last token."""
    from factpatch.editor.hooks import add_to_output
    from factpatch.editor.prompts import encode

    row = encode(loaded.tok, item[0], item[1])
    with add_to_output(loaded.adapter.mlp_out(layer), torch.tensor([0]), torch.tensor([row.subject_last]), delta[None]):
        return float(_answers(loaded, [item])[0])


def _keys(loaded, layer: int, items) -> torch.Tensor:
    from factpatch.editor.keys import keys_of_rows
    from factpatch.editor.prompts import encode

    return keys_of_rows(loaded.adapter, loaded.tok, layer, [encode(loaded.tok, t, s) for t, s, _ in items])


def _scaled(patch, alpha: float):
    from factpatch.core.patchfile import Patch

    return Patch({n: (u * alpha, v) for n, (u, v) in patch.factors.items()}, patch.manifest)


def edited(loaded, edits, method: str):
    """(result, seconds, [(layer, values)]): the batch edited once by `method`, with the values it found."""
    from factpatch.editor import memit
    from factpatch.editor.memit import MemitParams
    from factpatch.editor.pipeline import EditOptions, run_edit

    params = MemitParams.joint() if method == "memit-joint" else MemitParams()
    with recorded_values(memit) as seen:
        t0 = time.perf_counter()
        result = run_edit(loaded, edits, EditOptions(method="memit", memit=params))
        seconds = time.perf_counter() - t0
    return result, seconds, seen


def values_against_patch(loaded, edits, covs, result, values) -> dict:
    """Plain MEMIT: its values added at the subject on the base model, against the patch it wrote."""
    from factpatch.editor.cov_solve import CovSolver
    from factpatch.editor.weights import apply_patch, restored_after

    world, adapter = loaded.world, loaded.adapter
    layer, deltas = values[0]
    held = [(i, t) for i, e in enumerate(edits) for t in world.heldout_paraphrases(e.subject, e.relation)]
    prompts = [(e.prompt, e.subject, e.target_new) for e in edits]
    held_items = [(t, edits[i].subject, edits[i].target_new) for i, t in held]
    with restored_after(adapter, [adapter.param_name(l) for l in result.layers]):
        apply_patch(adapter, result.patch)
        patched_prompts, patched_held = _answers(loaded, prompts), _answers(loaded, held_items)
    added_prompts = torch.tensor([_with_value_added(loaded, layer, it, deltas[i]) for i, it in enumerate(prompts)])
    added_held = torch.tensor([_with_value_added(loaded, layer, it, deltas[i]) for (i, _), it in zip(held, held_items)])

    k_prompt, k_held = _keys(loaded, layer, prompts), _keys(loaded, layer, held_items)
    owner = torch.tensor([i for i, _ in held])
    solve = CovSolver(covs[layer])
    whitened = solve(k_prompt.T).T  # C⁻¹k per prompt key
    reach = (k_prompt * whitened).sum(-1)  # kᵀC⁻¹k
    reach_held = (k_held * solve(k_held.T).T).sum(-1)
    whitened_same = (k_held * whitened[owner]).sum(-1) / (reach[owner] * reach_held).sqrt()
    gram = k_prompt @ whitened.T / torch.outer(reach.sqrt(), reach.sqrt())
    off = ~torch.eye(len(edits), dtype=torch.bool)
    raw_same = torch.nn.functional.cosine_similarity(k_prompt[owner], k_held, dim=-1)

    by_order = []
    prompt_first = torch.tensor([edits[i].prompt.startswith("{}") for i, _ in held])
    held_first = torch.tensor([t.startswith("{}") for _, t in held])
    for pf in (True, False):
        for hf in (True, False):
            m = (prompt_first == pf) & (held_first == hf)
            if m.any():
                by_order.append({"prompt_subject_first": pf, "heldout_subject_first": hf, "rows": int(m.sum()),
                                 "key_cosine": round(float(raw_same[m].mean()), 3),
                                 "value_added": round(float(added_held[m].mean()), 3),
                                 "patch": round(float(patched_held[m].mean()), 3)})
    return {
        "layer": layer,
        "value_added_at_subject": {"prompts": round(float(added_prompts.mean()), 3), "heldout": round(float(added_held.mean()), 3)},
        "patch": {"prompts": round(float(patched_prompts.mean()), 3), "heldout": round(float(patched_held.mean()), 3)},
        "by_subject_order": by_order,
        "keys": {
            "same_subject_cosine_raw": round(float(raw_same.mean()), 3),
            "same_subject_cosine_whitened": round(float(whitened_same.mean()), 3),
            "different_subjects_cosine_whitened_abs": round(float(gram[off].abs().mean()), 4),
            # E|cos| of two random directions in the key space: √(2 / (π d))
            "random_directions_cosine_abs": round((2 / (torch.pi * k_prompt.shape[1])) ** 0.5, 4),
            "k_Cinv_k": {"median": round(float(reach.median()), 1), "min": round(float(reach.min()), 1),
                         "max": round(float(reach.max()), 1)},
        },
    }


def delivery_spectrum(loaded, edits, cov: torch.Tensor, layer: int, deltas: torch.Tensor, lams: list[float]) -> dict:
    """The share of the values plain MEMIT's solve writes at their own keys, per λ: for the values found
    (each edit's δ on all of its key rows), and the range over every arrangement of values across the
    edits (the eigenvalues of the edit-level delivery operator); with how the values' cosines follow
    the keys' (what EAMET aligns)."""
    from factpatch.editor.keys import keys_of_rows, written_rows
    from factpatch.editor.memit import MemitParams
    from factpatch.editor.prompts import context_prefixes

    prefixes = context_prefixes(loaded.adapter.model, loaded.tok, MemitParams().n_prefixes, seed=0)
    rows, owner = written_rows(loaded.tok, edits, prefixes)
    keys = keys_of_rows(loaded.adapter, loaded.tok, layer, rows)
    gram = keys @ torch.linalg.solve(cov.to(torch.float64), keys.T)  # KᵀC⁻¹K over the key rows
    # each edit's δ is the same on all of its rows: P spreads an edit-level pattern over them, unit norm
    spread = torch.zeros(len(rows), len(edits), dtype=torch.float64)
    spread[torch.arange(len(rows)), owner] = 1.0
    spread = spread / spread.sum(0).sqrt()
    values = spread @ deltas.to(torch.float64)
    out: dict = {"key_rows": len(rows)}
    for lam in lams:
        rows_delivered = gram @ torch.linalg.inv(gram + lam * torch.eye(len(rows), dtype=torch.float64))
        per_edit = spread.T @ rows_delivered @ spread
        eig = torch.linalg.eigvalsh((per_edit + per_edit.T) / 2).flip(0)
        found = torch.trace(values.T @ rows_delivered @ values) / torch.trace(values.T @ values)
        out[f"lambda_{lam:g}"] = {"values_found": round(float(found), 3),
                                  "any_arrangement": {"mean": round(float(eig.mean()), 3), "median": round(float(eig.median()), 3),
                                                      "top_10": round(float(eig[:10].mean()), 3), "max": round(float(eig[0]), 3),
                                                      "min": round(float(eig[-1]), 4)}}
    mean_keys = torch.nn.functional.normalize(spread.T @ keys / spread.sum(0)[:, None], dim=-1)
    unit_values = torch.nn.functional.normalize(deltas.to(torch.float64), dim=-1)
    off = ~torch.eye(len(edits), dtype=torch.bool)
    key_cos, value_cos = (mean_keys @ mean_keys.T)[off], (unit_values @ unit_values.T)[off]
    out["cosines"] = {"keys_raw": round(float(key_cos.mean()), 3), "values": round(float(value_cos.mean()), 3),
                      "correlation": round(float(torch.corrcoef(torch.stack([key_cos, value_cos]))[0, 1]), 3)}
    return out


def scaled_updates(loaded, edits, method: str, result, seconds: float, alphas: list[float]) -> dict:
    from factpatch.editor.pipeline import evaluate_patch, heldout_texts

    heldout = heldout_texts(loaded, None)
    rows = []
    for a in alphas:
        m = evaluate_patch(loaded, _scaled(result.patch, a), edits, heldout)["metrics"]
        rows.append({"alpha": a, **{k: m.get(k) for k in ("efficacy", "efficacy_prob", "generalization",
                                                        "neighbours_unchanged", "ppl_drift")}})
        print(f"  {method} α {a}: {rows[-1]}", flush=True)
    return {"method": method, "layers": result.layers, "seconds": round(seconds, 1), "scaled": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", choices=("memit", "memit-joint"), default=["memit", "memit-joint"])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0, 3.0])
    args = ap.parse_args()

    from factpatch.editor.memit import MemitParams
    from factpatch.editor.pipeline import corpus_for, load
    from factpatch.editor.stats import second_moments
    from factpatch.fixture.build import ensure_fixture

    from .editor_scale import chain_edits

    torch.set_num_threads(2)
    fixture = ensure_fixture()
    loaded = load(fixture)
    edits = chain_edits(loaded.world, args.edits, seed=args.seed)
    fingerprint = json.loads((fixture / "train_report.json").read_text()).get("weights_fingerprint")
    print(f"fixture {fingerprint}, {len(edits)} edits", flush=True)
    out: dict = {"fixture": fingerprint, "edits": len(edits), "seed": args.seed, "machine": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads()}
    out["scaled_updates"] = []
    for method in args.methods:
        result, seconds, values = edited(loaded, edits, method)
        if method == "memit":  # --joint optimises its values through the update: no value alone to add
            covs = second_moments(loaded.adapter, loaded.tok, result.layers, corpus_for(loaded, None),
                                  fingerprint=loaded.identity)
            out["values_against_patch"] = values_against_patch(loaded, edits, covs, result, values)
            print(f"  values against patch: {out['values_against_patch']}", flush=True)
            layer, deltas = values[0]
            out["delivery_spectrum"] = delivery_spectrum(loaded, edits, covs[layer], layer, deltas,
                                                         [MemitParams().mom2_weight, 3000.0, 1000.0])
            print(f"  delivery spectrum: {out['delivery_spectrum']}", flush=True)
        out["scaled_updates"].append(scaled_updates(loaded, edits, method, result, seconds, args.alphas))
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
