"""`factpatch edit`, `factpatch eval` and `factpatch patch inspect`.

Exit codes: 0 success, 1 an evaluation gate failed, 2 bad input (nothing was computed or written).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from factpatch.core import patchfile
from factpatch.core import spec as edit_spec
from factpatch.core.renamed_flags import deprecated

console = Console(stderr=True, soft_wrap=True)  # error text stays greppable, unwrapped
out = Console()

patch_app = typer.Typer(help="Inspect patch files.", no_args_is_help=True)

EXIT_GATE, EXIT_INPUT = 1, 2


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(EXIT_INPUT)


def _check_out_path(path: Path) -> None:
    if path.exists() and path.is_dir():
        _fail(f"--out {path} is a folder; give a file name such as {path / 'edit.fpatch'}")
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        _fail(f"--out {path}: {probe} is not writable")


def _gates(min_efficacy, min_generalization, max_specificity_drop, max_ppl_drift, min_regression_unchanged=0.98):
    from .evaluate import Gates

    return Gates(min_efficacy, min_generalization, max_specificity_drop, max_ppl_drift, min_regression_unchanged)


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{100 * v:.1f} %" if pct else f"{v:.4g}"
    return str(v)


def _metrics_table(report: dict[str, Any], title: str) -> Table:
    m = report["metrics"]
    t = Table(title=title)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("gate", justify="right")
    t.add_column("", justify="center")
    gates = {g["gate"]: g for g in report["gates"]}

    def row(label, key, pct=True, gate=None, suffix=""):
        g = gates.get(gate) if gate else None
        gtxt = f"{g['op']} {_fmt(g['threshold'], pct) if gate != 'specificity_drop' else g['threshold']}" if g else ""
        mark = "" if not g or g["passed"] is None else ("[green]pass[/green]" if g["passed"] else "[red]FAIL[/red]")
        val = m.get(key)
        t.add_row(label, (_fmt(val, pct) if key != "specificity_drop" or val is None else f"{val:.2f} pts") + suffix, gtxt, mark)

    row("edits", "edits")
    row("efficacy (greedy and P(new) > P(old))", "efficacy", gate="efficacy")
    row("generalization (paraphrases)", "generalization", gate="generalization")
    source = m.get("neighbour_source")
    row("neighbours unchanged" + (f" ({source})" if source and source != "world" else ""), "neighbours_unchanged")
    for which in ("old", "new"):
        if m.get(f"{which}_value_neighbours_unchanged") is not None:
            row(f"subjects holding the {which} value unchanged", f"{which}_value_neighbours_unchanged")
    row("specificity drop (neighbour accuracy)", "specificity_drop", gate="specificity_drop")
    if m.get("regression_facts"):
        row(f"regression set unchanged ({m['regression_facts']} other facts)", "regression_unchanged", gate="regression_unchanged")
    row("perplexity drift (held-out text)", "ppl_drift", gate="ppl_drift")
    row("mean KL on unrelated text (nats/token)", "kl_unrelated", pct=False)
    return t


def _print_not_taken(report: dict[str, Any], most: int = 10) -> None:
    """The edits that did not take, with what the model answers instead (the first `most`)."""
    missed = report["metrics"].get("edits_not_taken") or []
    if not missed:
        return
    t = Table(title=f"{len(missed)} edit(s) not taken")
    for col in ("subject", "relation", "new target", "model says"):
        t.add_column(col)
    for x in missed[:most]:
        t.add_row(x["subject"], x["relation"], x["target_new"], x["answer"])
    if len(missed) > most:
        t.add_row(f"… {len(missed) - most} more (--json has them all)", "", "", "")
    out.print(t)


def _run_progress():
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _written_text(w: dict | None) -> str:
    """How an edit was written, for a table cell: "memit L3-5 @subject", a fallback write after it."""
    if not w:
        return "?"
    one = lambda x: f"{x['method']} L{','.join(map(str, x['layers']))} @{x['key_at']}"
    return one(w) + (f" + fallback {one(w['fallback'])}" if w.get("fallback") else "")


def _fallback_settings(fallback_layer: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """--fallback-layer as (ROME, MEMIT) settings. None (the default): ROME's fallback as the model's
    settings say (on for the fixture, off for a published model), MEMIT's pass for shared subjects on at
    its default layer. A layer number: both on there, MEMIT's for single edits too. "off": none."""
    if fallback_layer is None:
        return {}, {"last_token_fallback": False}
    if fallback_layer.strip().lower() == "off":
        return {"last_token_fallback": False}, {"last_token_fallback": False, "shared_subject_last_token": False}
    try:
        layer = int(fallback_layer)
    except ValueError:
        _fail(f"--fallback-layer {fallback_layer!r}: give a layer number or off")
    on = {"last_token_fallback": True, "fallback_layer": layer}
    return on, {**on, "shared_subject_last_token": True}


def _memory_budget(value: str | None) -> int | str:
    """--memory-budget as EditOptions.memory_budget: bytes, "default" when not given, or "none"."""
    if value is None:
        return "default"
    if value.strip().lower() == "none":
        return "none"
    try:
        mib = float(value)
    except ValueError:
        mib = float("nan")
    if not mib > 0 or mib == float("inf"):
        _fail(f"--memory-budget {value!r}: MiB of activations a pass may hold, a number above 0, or none")
    return int(mib * 2**20)


def _print_layer_choice(report: dict[str, Any] | None) -> None:
    """Where --layers auto's choice came from: measured now, or read back from the stored one."""
    if not report:
        return
    cache = report.get("cache") or {}
    layers = ",".join(map(str, report.get("chosen", [])))
    if cache.get("hit"):
        out.print(f"layers {layers}: the choice stored {cache.get('made')} for {', '.join(cache.get('relations', []))} "
                  "(--retrace to trace and sweep again)")
    else:
        secs = (report.get("seconds") or {}).get("total")
        out.print(f"layers {layers}: chosen by causal trace and a sweep of {len(report.get('candidates', []))} candidates"
                  + (f" in {secs:.1f} s" if secs is not None else "") + ", stored for later edits of these relations")


def edit_cmd(
    model: Path = typer.Option(..., "--model", help="Hugging Face model folder (the base)."),
    spec: Path = typer.Option(..., "--spec", help="Edit spec, YAML or JSONL."),
    out_path: Path = typer.Option(..., "--out", help="Patch file to write (.fpatch)."),
    method: str = typer.Option("memit", "--method", help="rome (one layer, edits in sequence) or memit (a batch over several layers)."),
    layers: Optional[str] = typer.Option("auto", "--layers", help="Layers to edit: 3,4,5 or 3-5; auto: chosen by causal trace and a validation sweep; default: the model's published settings (editor/hparams), the fixture's own causal trace, else by depth."),
    retrace: bool = typer.Option(False, "--retrace", help="With --layers auto: trace and sweep again even when a choice for this model and these relations is stored (the first auto edit of a relation stores it), and store the new one."),
    load_dtype: str = typer.Option("stored", "--load-dtype", help="The dtype the model is held in: stored (its checkpoint's: bf16, fp16 or fp32) or float32 (twice a bf16 checkpoint's memory). Values, losses and solves are float32 or wider either way."),
    hparams: Optional[Path] = typer.Option(None, "--hparams", help="JSON file with the model's default layers, MEMIT's λ and the value optimisation's settings, instead of the published ones; see editor/hparams/."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="Folder of .txt files for the covariance statistics; default: the fixture's corpus."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="Corpus texts used for the covariance statistics; default: all."),
    parent: Optional[Path] = typer.Option(None, "--parent", help="Patch this batch follows; the new patch includes its factors."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the patch and record the metrics in its manifest."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the edit report (timings, metrics) as JSON."),
    seed: int = typer.Option(0, "--seed"),
    fallback_layer: Optional[str] = typer.Option(None, "--fallback-layer", help="Where edits not taken at the subject are written again, with their key at the prompt's last token (not part of ROME or MEMIT; the manifest names each such edit). A layer number: on there for every method and edit. off: never. Default: MEMIT writes there only the edits of a subject edited several times in the batch that its shared value did not carry, two thirds down the model; ROME as the model's settings say (on for the fixture, off for a published model)."),
    joint: bool = typer.Option(False, "--joint", help="MEMIT at one layer, the batch's values optimised through the very update the patch writes: more edits take and fewer neighbours move, about 4x slower; best with paraphrases and keep prompts in the spec."),
    null_space: Optional[float] = typer.Option(None, "--null-space", help="MEMIT confined to the directions the corpus keys leave empty (AlphaEdit): eigenvalues of the key covariance below this share of the largest, e.g. 1e-4; with --parent the chain's earlier edits are left as they are too. Default: off (MEMIT's solve)."),
    chain_weight: Optional[float] = typer.Option(None, "--chain-weight", help="With --parent: how much each of the chain's earlier edits' keys weighs against a new edit's in MEMIT's solve (held as they are). Default: 100 with --joint (it keeps earlier batches' edits, bench/results/editor_tuning.md), 0 otherwise (MEMIT as published)."),
    stop_at_argmax: bool = typer.Option(False, "--stop-at-argmax", help="Stop each edit's value optimisation once its target is the most probable answer in every phrasing it is written in (ENCORE's most-probable early stopping). ROME single edits about 4x faster for fewer paraphrases and neighbours held; it loses MEMIT batches their edits (bench/results/editor_tuning.md)."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", metavar="MIB|none", help="MiB of activations one pass of the edit may keep for its backward pass (the value optimisation's, and those reading keys and residuals; measured per token for this model); the backward's transient gradients come on top, about as much again. A batch too large for it takes more, smaller passes. Default: a tenth of the model's bytes, at least 256 MiB; 'none': up to 2,048 rows a pass, however large."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", exists=True, dir_okay=False, help="Sign the patch with this private key (PEM, elliptic curve): writes OUT.sig beside it (see `factpatch patch sign`)."),
) -> None:
    """Compute a ROME or MEMIT edit and write it as a patch file."""
    from .memit import MemitParams
    from .pipeline import EditInputError, EditOptions, check_architecture, evaluate_patch, heldout_texts, load, run_edit
    from .rome import RomeParams

    _check_out_path(out_path)
    if retrace and layers != "auto":
        _fail(f"--retrace redoes --layers auto's choice; it cannot be used with --layers {layers}")
    if joint and method != "memit":
        _fail(f"--joint is a MEMIT setting; it cannot be used with --method {method}")
    if null_space is not None and (method != "memit" or joint or not 0 < null_space < 1):
        _fail(f"--null-space {null_space!r}: a share in (0, 1) of the covariance's largest eigenvalue, for --method memit "
              "without --joint")
    if chain_weight is not None and (method != "memit" or parent is None or not chain_weight >= 0):
        _fail(f"--chain-weight {chain_weight!r}: a weight ≥ 0 for --method memit with --parent (it weighs the parent "
              "chain's edits)")
    budget = _memory_budget(memory_budget)
    rome_fallback, memit_fallback = _fallback_settings(fallback_layer)
    try:
        parsed = edit_spec.load(spec)
    except edit_spec.SpecError as e:
        _fail(str(e))
    try:
        check_architecture(model)
        loaded = load(model, hparams=hparams, dtype=load_dtype)
    except EditInputError as e:
        _fail(str(e))
    memit = replace(MemitParams.joint() if joint else MemitParams(), **memit_fallback, null_space=null_space)
    if chain_weight is not None:
        memit = replace(memit, chain_weight=chain_weight)
    rome = RomeParams(**rome_fallback)
    if stop_at_argmax:
        memit = replace(memit, value=replace(memit.value, stop_at_argmax=True))
        rome = replace(rome, value=replace(rome.value, stop_at_argmax=True))
    opts = EditOptions(method=method, layers=layers, corpus_dir=str(corpus) if corpus else None, n_samples=samples, parent=str(parent) if parent else None, progress=True, seed=seed,
                       rome=rome, memit=memit,
                       memory_budget=budget, layer_cache=not retrace)
    edits = parsed.edits
    with _run_progress() as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task({"values": "optimising values", "values-retry": "second pass, edits not taken", "values-last-token": "at the last token, edits not taken", "last-token": "at the last token, edits the batch left", "layers": "writing layers", "edits": "ROME edits"}.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            result = run_edit(loaded, edits, opts, on_progress=on_progress)
        except EditInputError as e:
            _fail(str(e))
        report: dict[str, Any] = {"layers": result.layers, "seconds": result.seconds, "details": result.info}
        if evaluate:
            try:
                heldout = heldout_texts(loaded, None)
            except EditInputError as e:
                _fail(str(e))
            bar.add_task("evaluating", total=None)
            ev = evaluate_patch(loaded, result.patch, edits, heldout)
            result.patch.manifest["eval"] = ev
            report.update(ev)
    digest = patchfile.write(result.patch, out_path)
    report["digest"] = digest
    if sign_key:
        from factpatch.core.signing import SignatureError, sign

        try:
            report["signature"] = str(sign(out_path, sign_key))
        except SignatureError as e:
            _fail(f"--sign-key: {e} (the unsigned patch is in {out_path})")
    t = Table(title=f"{method.upper()} · {len(edits)} edit(s) · layers {','.join(map(str, result.layers))}")
    t.add_column("subject")
    t.add_column("relation")
    t.add_column("old → new")
    # ROME reports each edit's optimisation: a target NLL well above 0 is an edit that did not take.
    per_edit = result.info.get("per_edit") or []
    if per_edit:
        t.add_column("target NLL", justify="right")
    for i, e in enumerate(result.patch.manifest["edits"][-len(edits):][:20]):
        row = [e["subject"], e["relation"], f"{e.get('target_old') or '?'} → {e['target_new']}"]
        if per_edit:
            rec = per_edit[i]
            where = f" (last token, layer {rec['layer']})" if rec.get("key_at") == "last" else ""
            row.append(f"{rec['nll']:.2f}" + (" (2nd pass)" if rec.get("second_pass") else "") + where)
        t.add_row(*row)
    if len(edits) > 20:
        t.add_row(f"… {len(edits) - 20} more", "", "", *([""] if per_edit else []))
    out.print(t)
    _print_layer_choice(result.patch.manifest["hparams"].get("layer_choice"))
    fallback = result.info.get("last_token_fallback") or {}
    if fallback.get("written"):
        names = ", ".join(f"{w['subject']} ({w['relation']})" for w in fallback["written"])
        out.print(f"{len(fallback['written'])} edit(s) the batch left written at the prompt's last token, "
                  f"layer {fallback['written'][0]['layer']}: {names}")
    elif fallback.get("missed"):
        out.print(f"{fallback['missed']} edit(s) the batch left: more than the fallback's share, none written again")
    if evaluate:
        out.print(_metrics_table(report, "evaluation"))
        _print_not_taken(report)
    out.print(f"covariance {result.seconds['stats']:.1f} s · edit {result.seconds['edit']:.1f} s · wrote {out_path} ({digest})"
              + (f", signed: {report['signature']}" if sign_key else ""))
    if json_out:
        json_out.write_text(json.dumps(report, indent=2, default=str))


def eval_cmd(
    model: Path = typer.Option(..., "--model", help="Hugging Face model folder (the base the patch was made for)."),
    patch: Path = typer.Option(..., "--patch", help="Patch file (.fpatch)."),
    spec: Optional[Path] = typer.Option(None, "--spec", help="Edits to evaluate; default: the edits in the patch's manifest."),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="Folder of .txt files for locality; default: the fixture's held-out corpus."),
    load_dtype: str = typer.Option("stored", "--load-dtype", help="The dtype the model is held in: stored (its checkpoint's) or float32."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every number as JSON."),
    min_efficacy: float = typer.Option(0.90, help="Gate: least share of edits that take."),
    min_generalization: float = typer.Option(0.85, help="Gate: least share of paraphrases that take."),
    max_specificity_drop: float = typer.Option(2.0, help="Gate: most points of neighbour accuracy lost."),
    max_ppl_drift: float = typer.Option(0.005, help="Gate: largest relative increase of held-out perplexity."),
    regression: int = typer.Option(0, "--regression", min=0, help="Also check this many other facts of the fixture's world (the regression set); 0: none."),
    min_regression_unchanged: float = typer.Option(0.98, help="Gate: least share of the regression set answering as before."),
) -> None:
    """Evaluate a patch against its base: efficacy, generalization, specificity, locality; gates set the exit code."""
    from .pipeline import EditInputError, check_architecture, check_fingerprint, evaluate_patch, heldout_texts, load

    try:
        p, digest = patchfile.read(patch)
    except (OSError, patchfile.PatchError) as e:
        _fail(f"--patch {patch}: {e}")
    try:
        edits = edit_spec.load(spec).edits if spec else edit_spec.from_manifest(p.manifest.get("edits", [])).edits
    except edit_spec.SpecError as e:
        _fail(str(e))
    try:
        check_architecture(model)
        loaded = load(model, dtype=load_dtype)
        check_fingerprint(loaded, p)
        texts = heldout_texts(loaded, str(heldout) if heldout else None)
    except EditInputError as e:
        _fail(str(e))
    with _run_progress() as bar:
        bar.add_task("evaluating", total=None)
        if regression and loaded.world is None:
            _fail("--regression: the model has no world.json to draw the regression set from")
        report = evaluate_patch(loaded, p, edits, texts, _gates(min_efficacy, min_generalization, max_specificity_drop, max_ppl_drift,
                                                                min_regression_unchanged), n_regression=regression)
    report["patch"] = digest
    out.print(_metrics_table(report, f"{patch.name} · {digest[:19]}…"))
    _print_not_taken(report)
    out.print("[green]all gates passed[/green]" if report["passed"] else "[red]a gate failed[/red]")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
    if not report["passed"]:
        raise typer.Exit(EXIT_GATE)


@patch_app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="Patch file (.fpatch)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw manifest as JSON."),
) -> None:
    """Print a local patch file's manifest and factor shapes readably (a stored patch: `ctl patch show`).

    Example: factpatch patch inspect refund.fpatch
    """
    try:
        p, digest = patchfile.read(path)
    except (OSError, patchfile.PatchError) as e:
        _fail(f"{path}: {e}")
    m = p.manifest
    if as_json:
        out.print_json(json.dumps({"digest": digest, **m}))
        return
    out.print(f"[bold]{path.name}[/bold]  {digest}")
    out.print(f"format {m.get('format')} · method {m.get('method')} · layers {m.get('layers')} · created {m.get('created')}")
    out.print(f"base {m['base'].get('model')} {m['base']['fingerprint']}")
    out.print(f"parent {m.get('parent') or '— (first patch)'}")
    w = Table(title="weights")
    w.add_column("parameter", no_wrap=True)
    w.add_column("rank", justify="right")
    w.add_column("u", justify="right")
    w.add_column("v", justify="right")
    for name in p.names:
        u, v = p.factors[name]
        w.add_row(name, str(p.rank(name)), "×".join(map(str, u.shape)), "×".join(map(str, v.shape)))
    out.print(w)
    edits = m.get("edits", [])
    t = Table(title=f"edits ({len(edits)})")
    for c in ("subject", "relation", "prompt", "old → new", "written", "provenance"):
        t.add_column(c, no_wrap=c == "subject")  # names stay whole on narrow terminals and in logs
    for e in edits[:50]:
        prov = ", ".join(f"{k}={v}" for k, v in (e.get("provenance") or {}).items())
        t.add_row(e["subject"], e["relation"], e["prompt"], f"{e.get('target_old') or '?'} → {e['target_new']}",
                  _written_text(e.get("written")), prov)
    if len(edits) > 50:
        t.add_row(f"… {len(edits) - 50} more", "", "", "", "", "")
    out.print(t)
    hp = {k: v for k, v in (m.get("hparams") or {}).items()}
    out.print("hparams " + json.dumps(hp, sort_keys=True))
    ev = m.get("eval")
    if ev and "metrics" in ev:
        out.print(_metrics_table(ev, "evaluation recorded in the manifest"))
        _print_not_taken(ev)


# `patch show` was this command's first name; `ctl patch show` is the stored patch, so the local one moved.
@patch_app.command("show", hidden=True, help="Deprecated name of `patch inspect`.")
def show_cmd(
    path: Path = typer.Argument(..., help="Patch file (.fpatch)."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw manifest as JSON."),
) -> None:
    deprecated("factpatch patch show", "factpatch patch inspect")
    inspect_cmd(path, as_json)


def register(app: typer.Typer) -> None:
    app.command("edit")(edit_cmd)
    app.command("eval")(eval_cmd)
    from .trace_cli import trace_cmd

    app.command("trace")(trace_cmd)
    from .sign_cli import register as register_signing

    register_signing(patch_app)
    app.add_typer(patch_app, name="patch")
