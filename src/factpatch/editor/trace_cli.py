"""`factpatch trace`: causal tracing of a spec's edits, as a heat map and as JSON.

Exit code 2 for bad input; every check (spec, model, output paths, subjects) runs before any tracing,
and outputs are written only when the trace is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from factpatch.core import atomic
from factpatch.core import spec as edit_spec

console = Console(stderr=True)
out = Console()


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(2)


def check_writable(path: Path, flag: str) -> None:
    if path.exists() and path.is_dir():
        _fail(f"{flag} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        _fail(f"{flag} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        _fail(f"{flag} {path}: not writable")


def write_json_atomic(data: dict, path: Path) -> None:
    atomic.write_text(path, json.dumps(data, indent=1))


def trace_cmd(
    model: Path = typer.Option(..., "--model", help="Hugging Face model folder."),
    spec: Path = typer.Option(..., "--spec", help="Edit spec, YAML or JSONL: its prompts and subjects are traced."),
    png: Optional[Path] = typer.Option(None, "--png", help="Heat map to write (PNG)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Every number as JSON."),
    samples: int = typer.Option(8, "--samples", min=1, help="Noise samples per prompt."),
    noise: float = typer.Option(3.0, "--noise", min=0.0, help="Noise std as a multiple of the subject embeddings' std."),
    window: Optional[int] = typer.Option(None, "--window", min=1, help="MLP/attention layers restored together; default ~20 % of the depth."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Causal trace: where in the model the edited facts live (the answer the model gives now is traced)."""
    from .pipeline import EditInputError, check_architecture, load
    from .trace import TraceError, TraceSettings, items_for_edits, trace

    for path, flag in ((png, "--png"), (json_out, "--json")):
        if path is not None:
            check_writable(path, flag)
    try:
        parsed = edit_spec.load(spec)
    except edit_spec.SpecError as e:
        _fail(str(e))
    try:
        check_architecture(model)
    except EditInputError as e:
        _fail(str(e))
    loaded = load(model)
    settings = TraceSettings(samples=samples, noise_scale=noise, window=window, seed=seed)
    progress = Progress(TextColumn("[bold]causal trace"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)
    try:
        items = items_for_edits(loaded.adapter, loaded.tok, parsed.edits)
        with progress:
            task = progress.add_task("trace", total=None)
            result = trace(loaded.adapter, loaded.tok, items, settings,
                           on_progress=lambda d, t: progress.update(task, completed=d, total=t))
    except TraceError as e:
        _fail(str(e))

    t = Table(title=f"MLP indirect effect by token role · {len(result.prompts)} prompt(s), window {result.window}")
    t.add_column("role")
    for l in range(result.n_layers):
        t.add_column(f"L{l}", justify="right")
    roles, mat, _ = result.by_role("mlp")
    for r, row in zip(roles, mat.tolist()):
        t.add_row(r, *(f"{x:+.3f}" for x in row))
    out.print(t)
    profile = result.subject_last_profile("mlp")
    peak = max(range(len(profile)), key=lambda l: profile[l])
    out.print(f"MLP effect at the subject's last token peaks at layer {peak} ({profile[peak]:.3f})")
    if json_out:
        write_json_atomic(result.to_json(), json_out)
        out.print(f"wrote {json_out}")
    if png:
        from .trace_plot import render

        render(result, png)
        out.print(f"wrote {png}")
