"""The CUDA path of a weight patch: in-place writes under captured CUDA graphs, and exact revert.

vLLM on a GPU captures CUDA graphs at start-up; a captured graph holds the *addresses* of the weights
it reads. The plugin therefore writes a patched weight into the existing storage (`InPlaceWriter`)
instead of handing the layer a new tensor. This benchmark proves that contract on a real GPU with the
plugin's own arithmetic (`tp.compose`) and writer, on a model whose whole forward pass is one captured
graph:

- after an in-place write, replaying the *old* graph gives the patched model's logits (the same as an
  eager forward pass) and the edited facts answer their new values;
- a new tensor put in the layer instead (what a naive loader does) is silently ignored by the graph;
- writing the held base back returns bit-identical logits, cycle after cycle;
- apply and revert cost against reloading the model and capturing its graph again.

Two steps, because the GPU machine has no factpatch install and no fixture:

    python -m bench.cuda_graph_writes prepare --bundle DIR        # here: fixture + demo patch + token rows
    python -m bench.cuda_graph_writes check --bundle DIR --out F  # on the GPU machine

`check` needs only torch, transformers and safetensors beside this repository's sources.
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
from pathlib import Path

import torch

from factpatch.core import patchfile
from factpatch.plugin.tp import compose
from factpatch.plugin.writer import InPlaceWriter

BUNDLE_ROWS = "rows.json"
BUNDLE_PATCH = "policy.fpatch"
MODEL_DIR = "model"
DEVICE = "cuda"


# ---------------------------------------------------------------------------------------------- prepare


def prepare(bundle: Path, unrelated: int) -> None:
    """Fixture model, the demo's policy patch (MEMIT, as the demo computes it) and teacher-forced rows."""
    from factpatch.demo import scenario
    from factpatch.editor.pipeline import EditOptions, load, run_edit
    from factpatch.editor.prompts import encode
    from factpatch.fixture.build import ensure_fixture, load_world

    fixture = ensure_fixture()
    world = load_world(fixture)
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copytree(fixture, bundle / MODEL_DIR, dirs_exist_ok=True)

    loaded = load(fixture)
    spec = scenario.edit_spec(world)
    result = run_edit(loaded, spec.edits, EditOptions(method="memit", layers="auto", progress=False))
    patchfile.write(result.patch, bundle / BUNDLE_PATCH)

    tok = loaded.tok
    rows = []
    for q in scenario.questions(world):
        template = q.prompt.replace(scenario.SUBJECT, "{}", 1)
        for kind, target in (("old", q.old), ("new", q.new)):
            r = encode(tok, template, scenario.SUBJECT, target=target)
            rows.append({"group": "edited", "kind": kind, "prompt": q.prompt, "target": target,
                         "ids": r.ids, "target_start": r.target_start})
    # Facts of other subjects: a patch must leave their answers alone.
    seen = 0
    for f in world.facts:
        if f.subject == scenario.SUBJECT:
            continue
        template = world.relations[f.relation].templates[f.train_templates[0]]
        r = encode(tok, template, f.subject, target=f.object)
        rows.append({"group": "unrelated", "kind": "old", "prompt": template.format(f.subject), "target": f.object,
                     "ids": r.ids, "target_start": r.target_start})
        seen += 1
        if seen >= unrelated:
            break
    (bundle / BUNDLE_ROWS).write_text(json.dumps({"pad_id": int(tok.pad_token_id or 0), "rows": rows}))
    print(f"bundle {bundle}: {len(rows)} rows, patch on {result.layers}")


# ------------------------------------------------------------------------------------------------ check


class GraphedForward:
    """One captured CUDA graph of the whole forward pass over a fixed [rows, T] batch.

    Right padding needs no attention mask: causal attention never lets a real token see the padding
    after it, so the graph reads nothing but the weights and the static ids.
    """

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor):
        self.model, self.ids = model, ids
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):  # warm-up outside the graph (cuBLAS handles, lazy inits)
                model(input_ids=ids, use_cache=False)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.logits = model(input_ids=ids, use_cache=False).logits
        torch.cuda.synchronize()

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        torch.cuda.synchronize()
        return self.logits.clone()

    @torch.no_grad()
    def eager(self) -> torch.Tensor:
        return self.model(input_ids=self.ids, use_cache=False).logits.clone()


def _static_batch(rows: list[dict], pad_id: int, device: str) -> torch.Tensor:
    T = max(len(r["ids"]) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["ids"])] = torch.tensor(r["ids"])
    return ids.to(device)


def _greedy_matches(logits: torch.Tensor, rows: list[dict]) -> list[bool]:
    """Teacher-forced: every target token is the argmax at the position before it."""
    out = []
    for i, r in enumerate(rows):
        s, ids = r["target_start"], r["ids"]
        pred = logits[i, s - 1 : len(ids) - 1].argmax(-1).tolist()
        out.append(pred == ids[s:])
    return out


def _rate(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else float("nan")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _load(model_dir: Path, dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=attn).to(DEVICE).eval()


def _patched_weights(model: torch.nn.Module, patch: patchfile.Patch) -> tuple[dict, dict]:
    """Held base copies and base + u vᵀ per patched layer, as the worker extension builds them."""
    bases, new = {}, {}
    for name in patch.names:
        module = name[: -len(".weight")]
        w = model.get_submodule(module).weight.detach()
        u, v = patch.factors[name]
        bases[module] = w.clone()
        new[module] = compose(bases[module], u.to(w.device), v.to(w.device))
    return bases, new


def _write_all(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> float:
    writer = InPlaceWriter()
    t0 = time.perf_counter()
    for module, w in weights.items():
        writer.write(model.get_submodule(module), w)
    return time.perf_counter() - t0


def check_model(model_dir: Path, patch: patchfile.Patch, rows: list[dict], pad_id: int,
                dtype: torch.dtype, cycles: int, attn: str = "sdpa") -> dict:
    t_load = time.perf_counter()
    model = _load(model_dir, dtype, attn)
    ids = _static_batch(rows, pad_id, DEVICE)
    t_capture = time.perf_counter()
    graphed = GraphedForward(model, ids)
    restart_s = time.perf_counter() - t_load  # reload + capture: what a restart on an edited checkpoint redoes
    capture_s = time.perf_counter() - t_capture

    edited_old = [i for i, r in enumerate(rows) if r["group"] == "edited" and r["kind"] == "old"]
    edited_new = [i for i, r in enumerate(rows) if r["group"] == "edited" and r["kind"] == "new"]
    unrelated = [i for i, r in enumerate(rows) if r["group"] == "unrelated"]

    def answers(logits):
        ok = _greedy_matches(logits, rows)
        return {"edited_answer_old": _rate([ok[i] for i in edited_old]),
                "edited_answer_new": _rate([ok[i] for i in edited_new]),
                "unrelated_answer_trained": _rate([ok[i] for i in unrelated])}, ok

    base = graphed.replay()
    base_eager = graphed.eager()
    base_rates, base_ok = answers(base)

    bases, new = _patched_weights(model, patch)
    apply_s = _write_all(model, new)
    patched = graphed.replay()
    patched_eager = graphed.eager()
    patched_rates, patched_ok = answers(patched)
    unrelated_kept = _rate([base_ok[i] == patched_ok[i] for i in unrelated])

    # Bits of the written weights against the file applied on the CPU (apply_to_state_dict).
    cpu_state = {m + ".weight": b.detach().cpu().clone() for m, b in bases.items()}
    patchfile.apply_to_state_dict(cpu_state, patch)
    bits_vs_cpu = {m: float((model.get_submodule(m).weight.detach().cpu().float() - cpu_state[m + ".weight"].float()).abs().max())
                   for m in bases}

    revert_s = _write_all(model, bases)
    reverted = graphed.replay()

    # A naive loader: a new Parameter in the layer. Eager forward passes see it, the captured graph does not.
    originals = {m: model.get_submodule(m).weight for m in new}
    for m, w in new.items():
        model.get_submodule(m).weight = torch.nn.Parameter(w.clone(), requires_grad=False)
    naive_replay = graphed.replay()
    naive_eager = graphed.eager()
    for m, p in originals.items():
        model.get_submodule(m).weight = p

    apply_times, revert_times, exact = [], [], 0
    for _ in range(cycles):
        apply_times.append(_write_all(model, new))
        hot = graphed.replay()
        revert_times.append(_write_all(model, bases))
        back = graphed.replay()
        exact += int(torch.equal(back, base) and torch.equal(hot, patched))

    apply_med = statistics.median([apply_s] + apply_times)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "attention": attn,
        "rows": len(rows),
        "graph_vs_eager_max_abs_logit_diff": {
            "base": float((base - base_eager).abs().max()),
            "patched": float((patched - patched_eager).abs().max()),
        },
        "base": base_rates,
        "patched_by_in_place_write": patched_rates,
        "unrelated_answers_unchanged": unrelated_kept,
        "patched_logits_differ_from_base": not torch.equal(patched, base),
        "revert_bit_identical_logits": torch.equal(reverted, base),
        "weights_vs_cpu_apply_max_abs_diff": bits_vs_cpu,
        "new_parameter_ignored_by_graph": {
            "graph_replay_equals_base": torch.equal(naive_replay, base),
            "eager_equals_patched": float((naive_eager - patched_eager).abs().max()) == 0.0,
        },
        "apply_revert_cycles": cycles,
        "cycles_bit_identical": exact,
        "apply_ms_median": _ms(apply_med),
        "revert_ms_median": _ms(statistics.median([revert_s] + revert_times)),
        "reload_and_capture_ms": _ms(restart_s),
        "capture_ms": _ms(capture_s),
        "reload_and_capture_over_apply": round(restart_s / apply_med, 1),
    }


def synthetic_scale(layers: int, hidden: int, inter: int, edit_layers: list[int], dtype: torch.dtype, cycles: int) -> dict:
    """Write cost at a production-like layer size: a randomly initialised Llama, saved and reloaded from
    local disk for the restart comparison, with a rank-4 random delta on `edit_layers`' down_proj."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=hidden // 128, num_key_value_heads=max(1, hidden // 512),
                      vocab_size=32000, max_position_embeddings=512, tie_word_embeddings=False)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        with torch.device(DEVICE):
            model = LlamaForCausalLM(cfg).to(dtype).eval()
        model.save_pretrained(tmp)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        torch.cuda.empty_cache()
        ids = torch.randint(3, 32000, (8, 64), generator=torch.Generator().manual_seed(1))
        t0 = time.perf_counter()
        model = _load(Path(tmp), dtype)
        graphed = GraphedForward(model, ids.to(DEVICE))
        restart_s = time.perf_counter() - t0

    g = torch.Generator().manual_seed(2)
    factors = {}
    for l in edit_layers:
        name = f"model.layers.{l}.mlp.down_proj.weight"
        w = model.get_submodule(name[:-7]).weight
        u, v = torch.randn(w.shape[0], 4, generator=g), torch.randn(w.shape[1], 4, generator=g)
        u *= 0.05 * w.float().norm().item() / (u @ v.T).norm()
        factors[name] = (u, v)
    patch = patchfile.Patch(factors, {})
    base = graphed.replay()
    bases, new = _patched_weights(model, patch)
    applies, reverts, exact, moved = [], [], 0, 0
    for _ in range(cycles):
        applies.append(_write_all(model, new))
        hot = graphed.replay()
        reverts.append(_write_all(model, bases))
        back = graphed.replay()
        moved += int(not torch.equal(hot, base))
        exact += int(torch.equal(back, base))
    apply_med = statistics.median(applies)
    return {
        "params": n_params, "layers": layers, "hidden": hidden, "intermediate": inter, "dtype": str(dtype).removeprefix("torch."),
        "edit_layers": edit_layers, "cycles": cycles,
        "cycles_where_patch_changed_graph_output": moved, "cycles_reverted_bit_identical": exact,
        "apply_ms_median": _ms(apply_med), "revert_ms_median": _ms(statistics.median(reverts)),
        "reload_from_local_disk_and_capture_ms": _ms(restart_s),
        "reload_and_capture_over_apply": round(restart_s / apply_med, 1),
    }


def check(bundle: Path, out: Path, cycles: int, scale: bool) -> int:
    if not torch.cuda.is_available():
        print("check needs a CUDA device", file=sys.stderr)
        return 2
    data = json.loads((bundle / BUNDLE_ROWS).read_text())
    patch, digest = patchfile.read(bundle / BUNDLE_PATCH)
    import transformers

    report = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "patch": {"sha256": digest, "tensors": patch.names, "method": patch.manifest.get("method")},
        "fixture": {},
    }
    failures = []
    for dtype in (torch.float32, torch.bfloat16):
        try:
            r = check_model(bundle / MODEL_DIR, patch, data["rows"], data["pad_id"], dtype, cycles)
        except RuntimeError as e:  # a forward pass that cannot be captured: say so, try plain attention
            print(f"capture with sdpa attention failed ({e}); trying eager attention", flush=True)
            r = check_model(bundle / MODEL_DIR, patch, data["rows"], data["pad_id"], dtype, cycles, attn="eager")
            r["sdpa_capture_error"] = str(e)[:500]
        report["fixture"][r["dtype"]] = r
        print(json.dumps(r, indent=1), flush=True)
        if not (r["revert_bit_identical_logits"] and r["cycles_bit_identical"] == cycles
                and r["new_parameter_ignored_by_graph"]["graph_replay_equals_base"] and r["patched_logits_differ_from_base"]):
            failures.append(r["dtype"])
    if scale:
        try:
            report["llama_1b_shape"] = synthetic_scale(16, 2048, 8192, [4, 5, 6, 7], torch.bfloat16, cycles)
            print(json.dumps(report["llama_1b_shape"], indent=1), flush=True)
        except Exception as e:  # the fixture part stands on its own
            report["llama_1b_shape"] = {"error": f"{type(e).__name__}: {e}"}
            print(report["llama_1b_shape"], flush=True)
    report["passed"] = not failures
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'PASS' if not failures else 'FAIL ' + ','.join(failures)} → {out}")
    return 0 if not failures else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fixture, demo patch and token rows into a bundle folder (any machine)")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--unrelated", type=int, default=60, help="facts of other subjects to check")
    c = sub.add_parser("check", help="run the checks on a CUDA device")
    c.add_argument("--bundle", type=Path, required=True)
    c.add_argument("--out", type=Path, default=Path("bench/results/cuda_graph_writes.json"))
    c.add_argument("--cycles", type=int, default=20)
    c.add_argument("--no-scale", dest="scale", action="store_false", help="skip the 1B-parameter-shape timing")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.bundle, args.unrelated)
        return 0
    return check(args.bundle, args.out, args.cycles, args.scale)


if __name__ == "__main__":
    sys.exit(main())
