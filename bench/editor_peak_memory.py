"""An edit's peak memory against its checkpoint's bytes, on a model of a released family's shape.

On the fixture (25 MiB) what an edit holds whatever the model (the covariance and its solve, the
libraries' buffers: about 75 MiB) outweighs the checkpoint, so its ratio says nothing about a real one.
Here the same measure on a model with TinyLlama 1.1B's shape (22 layers, hidden 2,048, MLP 5,632, 32
heads and 4 key-value heads, vocabulary 32,000; `SHAPES`), stored in bf16 as released, with random
weights, the fixture's tokenizer and world (its facts as edits, its corpus for the statistics). With
random weights what an edit writes is meaningless; what it holds while computing it is not. No model hub
is reachable here, so the weights are made, not downloaded.

    .venv/bin/python -m bench.editor_peak_memory [--shape tinyllama-1.1b] [--samples 400] [--budget-share S]

Each edit runs in a process of its own (`--one`): load the model, one forward pass, reset the process's
peak resident memory (/proc/self/clear_refs), run the edit, read the peak. The figure is (checkpoint +
the edit's own peak above what the loaded model held) / checkpoint, with the whole process's peak /
checkpoint beside it (the libraries' ~400 MiB included). ROME (one edit) and MEMIT (1 and 10 edits) at
the layers by depth that a model no settings file matches gets, with the settings of the fallback file
(GPT-J's) except the value steps, cut to 2: a step's memory is every step's, and 25 steps of a 1.1B
model take most of an hour on 2 cores. Each runs with `--memory-budget none` (passes of up to 2,048
rows) and with the budget an edit takes when given none (a tenth of the model's bytes, at least 256
MiB; editor/memory.py), and with --budget-share S also within S × the checkpoint. Writes
bench/results/editor_peak_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "editor_peak_memory.json"
WORK = Path(__file__).resolve().parent.parent / "build" / "peak-memory"
SHAPES = {
    # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T, config.json as released
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
                           tie_word_embeddings=False),
}
VALUE_STEPS = 2


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def make_model(shape: str, fixture: Path) -> Path:
    """The random-weight model of `shape` in bf16, with the fixture's tokenizer and world; made once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = WORK / shape
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    special = {k: v for k, v in json.loads((fixture / "config.json").read_text()).items() if k.endswith("_token_id")}
    config = LlamaConfig(**SHAPES[shape], **special)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for f in fixture.iterdir():  # tokenizer and world; not the build report (its layers are the fixture's)
        if f.is_file() and not f.name.startswith(("model", "config", "train_report")):
            shutil.copy(f, tmp / f.name)
    tmp.rename(out)
    return out


def hparams_file(model_dir: Path) -> Path:
    """The fallback settings (GPT-J's), the layers by depth, the value steps cut to VALUE_STEPS."""
    from transformers import AutoConfig

    from factpatch.editor.layers import default_layers
    from factpatch.editor.model_defaults import FALLBACK_FILE

    n = AutoConfig.from_pretrained(str(model_dir)).num_hidden_layers
    data = json.loads(FALLBACK_FILE.read_text())
    data.pop("match")
    data["name"] = f"{data['name']} settings, layers by depth, {VALUE_STEPS} value steps"
    data["rome"].update(layer=default_layers(n, "rome")[0])
    data["memit"].update(layers=default_layers(n, "memit"))
    for block in ("rome", "memit"):
        data[block]["value"]["steps"] = VALUE_STEPS
    path = model_dir.parent / f"{model_dir.name}-hparams.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def one(model_dir: Path, method: str, n: int, samples: int, budget: str) -> dict:
    """One edit in this process; `budget` is "none", "default" or a share of the checkpoint's bytes."""
    from factpatch.core.checkpoint import Checkpoint
    from factpatch.editor.pipeline import EditOptions, load, run_edit
    from factpatch.editor.rome import RomeParams

    from .editor_scale import chain_edits

    loaded = load(model_dir, hparams=hparams_file(model_dir))
    edits = chain_edits(loaded.world, n, seed=0)
    ckpt = sum(f.stat().st_size for f in Checkpoint(model_dir).weight_files())
    memory_budget = budget if budget in ("none", "default") else int(float(budget) * ckpt)
    # no second pass for edits a random model does not take in VALUE_STEPS steps (200 more steps)
    opts = EditOptions(method=method, layers="default", n_samples=samples, memory_budget=memory_budget,
                       rome=replace(RomeParams(), retry_lr=None))
    loaded.model(input_ids=loaded.tok(edits[0].prompt.format(edits[0].subject), return_tensors="pt").input_ids)
    held = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on is the edit's
    t0 = time.perf_counter()
    result = run_edit(loaded, edits, opts)
    seconds = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    ckpt_mib = ckpt / 2**20
    return {"method": method, "edits": n, "layers": result.layers, "dtype": loaded.model_dtype,
            "budget": budget,
            "budget_mib": _budget_mib(loaded, memory_budget),
            "seconds": round(seconds, 1), "value_steps": VALUE_STEPS,
            "memory_mib": {"checkpoint": round(ckpt_mib, 1), "after_load": round(held, 1), "peak": round(peak, 1),
                           "edit_increment": round(peak - held, 1)},
            "peak_vs_checkpoint": round((ckpt_mib + peak - held) / ckpt_mib, 3),
            "process_peak_vs_checkpoint": round(peak / ckpt_mib, 3)}


def _budget_mib(loaded, memory_budget) -> float | None:
    """The budget the edit ran within, in MiB (None: none)."""
    from factpatch.editor.memory import budget_bytes

    budget = budget_bytes(memory_budget, loaded.model)
    return None if budget is None else round(budget / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama-1.1b")
    ap.add_argument("--samples", type=int, default=400, help="corpus texts for the covariance (its size is the MLP's width squared whatever their number)")
    ap.add_argument("--budget-share", type=float, default=None, help="also run each edit within this share of the checkpoint's bytes")
    ap.add_argument("--one", nargs=5, metavar=("MODEL", "METHOD", "N", "SAMPLES", "BUDGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        model, method, n, samples, budget = args.one
        print(json.dumps(one(Path(model), method, int(n), int(samples), budget)))
        return
    from factpatch.fixture.build import ensure_fixture

    model_dir = make_model(args.shape, ensure_fixture())
    env = {**os.environ, "FACTPATCH_STATS_CACHE": str(WORK / "stats")}

    def run(method: str, n: int, budget: str) -> dict:
        cmd = [sys.executable, "-m", "bench.editor_peak_memory", "--one", str(model_dir), method, str(n), str(args.samples), budget]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
        print(out, flush=True)
        return json.loads(out)

    # one edit first: the covariance of every layer either method writes is computed and cached on disk,
    # so each measured edit reads it as a second edit would
    for method in ("memit", "rome"):
        run(method, 1, "none")
    budgets = ["none", "default"] + ([] if args.budget_share is None else [str(args.budget_share)])
    runs = [run(method, n, budget) for method, n in (("rome", 1), ("memit", 1), ("memit", 10)) for budget in budgets]
    RESULTS.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "shape": {"name": args.shape, **SHAPES[args.shape]}, "weights": "random (seed 0), bf16",
        "covariance_texts": args.samples, "budget_share": args.budget_share, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
