"""Patches on patches: successive MEMIT batches, each computed on the weights the previous patch leaves
(`--parent`), with MEMIT's solve, the null-space projected one (AlphaEdit), either solve holding the
earlier edits' keys (`--chain-weight`) and, with `--joint`, MEMIT through its update.

    .venv/bin/python -m bench.editor_scale [--generations 10] [--per-batch 20] [--null-space 1e-4 ...] [--joint]
        [--chain-weight 1 10 ...] [--only memit joint ...]

Writes bench/results/editor_scale.json: per variant, after every generation the greedy efficacy of
every edit made so far (its prompt); after the last, `factpatch eval`'s figures over all of them
(efficacy, paraphrases the patch was not written in, neighbours, perplexity drift) and the seconds.
The targets the issue sets for 10 × 20 edits: efficacy ≥ 0.90, paraphrase ≥ 0.80, neighbours ≥ 0.90.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from factpatch.core import patchfile
from factpatch.core.spec import Edit
from factpatch.editor.memit import MemitParams
from factpatch.editor.pipeline import EditOptions, answers_already, evaluate_patch, heldout_texts, load, run_edit
from factpatch.fixture.build import ensure_fixture

RESULTS = Path(__file__).parent / "results" / "editor_scale.json"


def chain_edits(world, n: int, seed: int) -> list[Edit]:
    """n facts of distinct subjects, each given another candidate, in the first trained phrasing."""
    rng = random.Random(seed)
    out, seen = [], set()
    for f in rng.sample(world.facts, len(world.facts)):
        if f.subject in seen:
            continue
        seen.add(f.subject)
        rel = world.relations[f.relation]
        out.append(Edit(subject=f.subject, relation=f.relation, prompt=rel.templates[f.train_templates[0]],
                        target_new=rng.choice([c for c in rel.candidates if c != f.object]), target_old=f.object))
        if len(out) == n:
            break
    return out


def run_chain(loaded, edits: list[Edit], per_batch: int, memit: MemitParams, tmp: Path, label: str) -> dict:
    parent, patch, history, t0, made = None, None, [], time.perf_counter(), []
    batches = [edits[i:i + per_batch] for i in range(0, len(edits), per_batch)]
    for g, batch in enumerate(batches, 1):
        # an earlier batch may already have moved one of these facts to its new value: the editor
        # refuses such an edit (it would change nothing), so it is counted apart and not sent
        already = answers_already(loaded, batch, patch)
        todo = [e for e, a in zip(batch, already) if not bool(a)]
        result = run_edit(loaded, todo, EditOptions(method="memit", layers="default", parent=parent, memit=memit))
        path = tmp / f"{label}-{g}.fpatch"
        patchfile.write(result.patch, path)
        parent, patch = str(path), result.patch
        made += todo
        taken = answers_already(loaded, made, patch)
        history.append({"generation": g, "edits": len(made), "already_answered": len(batch) - len(todo),
                        "efficacy_greedy": round(float(taken.float().mean()), 4),
                        "first_batch_greedy": round(float(taken[: len(batches[0])].float().mean()), 4),
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(label, history[-1], flush=True)
    final = patch
    report = evaluate_patch(loaded, final, made, heldout_texts(loaded, None))
    m = report["metrics"]
    keys = ("efficacy", "efficacy_prob", "generalization", "neighbours_unchanged", "ppl_drift", "kl_unrelated")
    return {"after_each_generation": history, "final": {k: m.get(k) for k in keys},
            "seconds": round(time.perf_counter() - t0, 1), "patch_rank": sum(int(u.shape[1]) for u, _ in final.factors.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--per-batch", type=int, default=20)
    ap.add_argument("--null-space", type=float, nargs="*", default=[1e-4])
    ap.add_argument("--chain-weight", type=float, nargs="*", default=[],
                    help="also chain with the earlier edits' keys held in the solve at these weights "
                         "(memit_chain_<w>; with --joint also joint_chain_<w>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--joint", action="store_true", help="also chain MEMIT through its update (--joint); "
                                                         "`--only joint` runs it alone")
    ap.add_argument("--only", nargs="+", metavar="VARIANT",
                    help="run only these variants (memit, null_space_<t>, joint, memit_chain_<w>, joint_chain_<w>); the others' results in the "
                         "file are kept as they were")
    args = ap.parse_args()
    fixture = ensure_fixture()
    loaded = load(fixture)
    edits = chain_edits(loaded.world, args.generations * args.per_batch, args.seed)
    variants = {"memit": MemitParams()}
    for t in args.null_space:
        variants[f"null_space_{t:g}"] = replace(MemitParams(), null_space=t)
    variants["joint"] = MemitParams.joint()
    for w in args.chain_weight:
        variants[f"memit_chain_{w:g}"] = replace(MemitParams(), chain_weight=w)
        variants[f"joint_chain_{w:g}"] = replace(MemitParams.joint(), chain_weight=w)
    if args.only:
        unknown = sorted(set(args.only) - set(variants))
        if unknown:
            ap.error(f"--only: unknown variant(s) {', '.join(unknown)}; known: {', '.join(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.only}
    elif not args.joint:
        variants = {k: v for k, v in variants.items() if not k.startswith("joint")}
    out = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
           "fixture": json.loads((fixture / "train_report.json").read_text()).get("weights_fingerprint"),
           "generations": args.generations, "per_batch": args.per_batch, "edits": len(edits),
           "targets": {"efficacy": 0.90, "generalization": 0.80, "neighbours_unchanged": 0.90}, "variants": {}}
    if args.only and RESULTS.exists():  # the variants not run now keep their earlier results
        earlier = json.loads(RESULTS.read_text())
        if earlier.get("fixture") == out["fixture"] and earlier.get("edits") == out["edits"]:
            out["variants"] = {k: v for k, v in earlier["variants"].items() if k not in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for label, memit in variants.items():
            out["variants"][label] = run_chain(loaded, edits, args.per_batch, memit, Path(tmp), label)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v["final"] for k, v in out["variants"].items()}, indent=2))


if __name__ == "__main__":
    main()
