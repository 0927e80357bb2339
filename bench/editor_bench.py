"""Editor benchmark on the fixture: speed (edits/s), covariance time, peak memory, and quality.

    .venv/bin/python -m bench.editor_bench [--quick]

Writes bench/results/editor.json. Everything is measured in one run on one machine (`--only rome|joint`
reruns one section alone on the same fixture weights and dates it); the batched value optimisation is
compared against a per-edit loop (what the published reference implementation does) on a sample of the
same edits, and the loop's time for the full batch is extrapolated from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import sys
import time
from pathlib import Path

import torch

from factpatch.core.spec import Edit
from factpatch.editor import layers as layer_choice
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
from factpatch.editor.prompts import context_prefixes
from factpatch.editor.stats import second_moments
from factpatch.editor.values import build_rows, optimise_values
from factpatch.fixture.build import REPORT_FILE, ensure_fixture
from factpatch.fixture.edit_samples import random_edits, with_keep_and_paraphrases

RESULTS = Path(__file__).parent / "results" / "editor.json"


_T0 = time.perf_counter()


def step(what: str) -> None:
    """One line per stage on stderr: the whole run takes over an hour on 2 cores."""
    print(f"[{(time.perf_counter() - _T0) / 60:5.1f} min] {what}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def insertions(loaded, n: int, seed: int) -> tuple[list[Edit], list[Edit]]:
    """n new facts: (subject, relation) pairs the fixture has no fact for, such as a company's instrument,
    each given a candidate of the relation other than what the base model answers now. The fixture holds
    740 facts, so a batch of 1,000 edits needs some of these besides rewrites.

    Returns (what is edited, what is evaluated): the same edits, the evaluated ones carrying two of the
    relation's other phrasings as paraphrases (no fact means no held-out phrasing in the world), which
    the edited ones leave out so that the paraphrases measured are not written."""
    from factpatch.editor.scoring import greedy_answers

    world = loaded.world
    rng = random.Random(seed)
    known = {(f.subject, f.relation) for f in world.facts}
    pairs = [(s, r) for kind in sorted(world.subjects) for s in world.subjects[kind]
             for r in sorted(world.relations) if (s, r) not in known]
    pairs = rng.sample(pairs, n)
    prompts = [world.relations[r].templates[0] for _, r in pairs]
    answers = greedy_answers(loaded.adapter, loaded.tok, [(p, s) for p, (s, _) in zip(prompts, pairs)])
    edited, evaluated = [], []
    for (s, r), prompt, now in zip(pairs, prompts, answers):
        rel = world.relations[r]
        e = Edit(subject=s, relation=r, prompt=prompt, target_old=now or None,
                 target_new=rng.choice([c for c in rel.candidates if c != now]))
        edited.append(e)
        evaluated.append(e.model_copy(update={"paraphrases": rng.sample(rel.templates[1:], 2)}))
    return edited, evaluated


def rome_section(loaded, heldout, n_rome: int, r_layer: list[int]) -> dict:
    """ROME: single edits, each from the base: one at a time, then the same edits optimised in one batch.

    Each edit keeps its subject's other facts and is written in its relation's other trained phrasings
    (keep prompts alone hold the neighbours but lose paraphrases); it is evaluated on held-out
    phrasings, so nothing held or written is measured."""
    world = loaded.world
    plain = random_edits(world, n_rome, seed=2)
    rome_edits = with_keep_and_paraphrases(world, plain)
    patches, secs = [], []
    step(f"ROME: {len(rome_edits)} single edits, one at a time")
    for e in rome_edits:
        t = time.perf_counter()
        r = run_edit(loaded, [e], EditOptions(method="rome"))
        secs.append(time.perf_counter() - t)
        patches.append(r.patch)
    ev = evaluate_each(loaded, patches, plain, heldout)
    step(f"ROME: the same {len(rome_edits)} edits in one batch")
    t = time.perf_counter()
    batched = run_single_edits(loaded, rome_edits, EditOptions(method="rome"))
    batched_s = time.perf_counter() - t
    ev_batched = evaluate_each(loaded, [r.patch for r in batched], plain, heldout)
    return {
        "measured_at": time.strftime("%Y-%m-%d"),
        "layer": r_layer,
        "edits": n_rome,
        "spec": "keep prompts (the subject's other facts, second trained phrasing) and trained paraphrases; evaluated on held-out paraphrases",
        "seconds_per_edit": round(sum(secs) / len(secs), 3),
        "edits_per_second": round(len(secs) / sum(secs), 3),
        "quality": round_metrics(ev["metrics"]),
        "batched_single_edits": {
            "seconds": round(batched_s, 2),
            "edits_per_second": round(n_rome / batched_s, 3),
            "speedup_vs_one_at_a_time": round(sum(secs) / batched_s, 2),
            "quality": round_metrics(ev_batched["metrics"]),
        },
    }


def joint_section(loaded, heldout, n_joint: int, r_layer: list[int]) -> dict:
    """MEMIT through its own update (--joint) against plain MEMIT on one spec: keep prompts in three
    phrasings and trained paraphrases, evaluated on held-out paraphrases."""
    plain_edits = random_edits(loaded.world, n_joint, seed=4)
    spec = with_keep_and_paraphrases(loaded.world, plain_edits, keep_heldout=True)
    res = {"measured_at": time.strftime("%Y-%m-%d"), "edits": n_joint,
           "spec": "keep prompts (second trained and held-out phrasings) and trained paraphrases; evaluated on held-out paraphrases"}
    for name, opts in (("plain", EditOptions(method="memit")),
                       ("joint", EditOptions(method="memit", layers=[r_layer[0]], memit=MemitParams.joint()))):
        step(f"MEMIT {name}: one batch of {n_joint}")
        t = time.perf_counter()
        r = run_edit(loaded, spec, opts)
        dt = time.perf_counter() - t
        res[name] = {"layers": list(r.layers), "seconds": round(dt, 2),
                     "quality": round_metrics(evaluate_patch(loaded, r.patch, plain_edits, heldout)["metrics"])}
    return res


def round_metrics(m: dict) -> dict:
    """The metrics, rounded; the edits not taken by count: their names are `factpatch eval`'s report, and a
    batch's parts would list each of them again (the 1,000-edit batch made the file 13,000 lines)."""
    out = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items() if k != "per_edit"}
    if "edits_not_taken" in out:
        out["edits_not_taken"] = len(out["edits_not_taken"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--only", choices=["rome", "joint"], help="rerun this section alone (10-15 minutes against 75) and "
                    "keep the others from the results file; each rerun section says when it was measured")
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load(ensure_fixture())
    world = loaded.world
    r_layer = layer_choice.default_layers(loaded.adapter.n_layers, "rome")
    n_rome, n_joint = (10, 20) if args.quick else (50, 100)
    heldout = heldout_texts(loaded, None)
    # The same recipe trained on another CPU gives other weights (and other editor numbers), so a section
    # rerun alone must find the weights the rest of the file was measured on, not only the same folder.
    weights = json.loads((loaded.path / REPORT_FILE).read_text())["weights_fingerprint"]
    if args.only:
        res = json.loads(RESULTS.read_text())
        if res.get("weights_fingerprint") != weights:
            raise SystemExit(f"{RESULTS} was measured on weights {res.get('weights_fingerprint', '(not recorded)')}, "
                             f"not on {weights} ({loaded.path}): rerun it whole")
        key, section = {"rome": ("rome", lambda: rome_section(loaded, heldout, n_rome, r_layer)),
                        "joint": ("memit_joint", lambda: joint_section(loaded, heldout, n_joint, r_layer))}[args.only]
        res[key] = section()
        res[f"peak_rss_mib_after_{key}"] = round(peak_rss_mib(), 1)
        RESULTS.write_text(json.dumps(res, indent=2))
        print(json.dumps(res[key], indent=2))
        return
    res: dict = {
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
        "fixture": str(loaded.path),
        "weights_fingerprint": weights,
    }

    # Covariance statistics, uncached: time and how MEMIT quality moves with the sample count.
    corpus = fixture_corpus(world)
    m_layers = layer_choice.default_layers(loaded.adapter.n_layers, "memit")
    all_layers = sorted(set(m_layers) | set(r_layer))
    step(f"covariance statistics, layers {all_layers}, uncached")
    t = time.perf_counter()
    second_moments(loaded.adapter, loaded.tok, all_layers, corpus, None, use_cache=False, progress=True)  # the pass itself, not a cache hit
    res["covariance"] = {"layers": all_layers, "texts": len(corpus.texts), "seconds": round(time.perf_counter() - t, 2)}

    edits100 = random_edits(world, 100, seed=1)
    sweep = {}
    for n in ([250, 4000] if args.quick else [100, 250, 1000, 4000]):
        step(f"MEMIT 100 with covariance from {n} texts")
        r = run_edit(loaded, edits100, EditOptions(method="memit", n_samples=n))
        ev = evaluate_patch(loaded, r.patch, edits100, heldout)
        sweep[n] = round_metrics(ev["metrics"])
    res["covariance"]["memit100_quality_by_samples"] = sweep
    res["peak_rss_mib_after_covariance"] = round(peak_rss_mib(), 1)

    res["rome"] = rome_section(loaded, heldout, n_rome, r_layer)
    res["peak_rss_mib_after_rome"] = round(peak_rss_mib(), 1)

    # MEMIT batches.
    res["memit"] = {"layers": m_layers}
    for n in ([10, 100] if args.quick else [10, 100, 1000]):
        edits = evaluated = random_edits(world, n, seed=3)
        entry = {"edits": n}
        step(f"MEMIT: one batch of {n}")
        if n > len(world.facts) // 2:
            # More than the fixture's facts allow to rewrite while keeping some as neighbours: 60 % rewrites
            # of existing facts, 40 % new facts (insertions); the unedited facts are the neighbours.
            n_new = n * 2 // 5
            rewrites = random_edits(world, n - n_new, seed=3)
            new, new_evaluated = insertions(loaded, n_new, seed=3)
            edits, evaluated = rewrites + new, rewrites + new_evaluated
            entry.update(rewrites=len(rewrites), insertions=len(new))
        t = time.perf_counter()
        r = run_edit(loaded, edits, EditOptions(method="memit"))
        dt = time.perf_counter() - t
        entry.update({"seconds": round(dt, 2), "edits_per_second": round(len(edits) / dt, 2),
                      "stage_seconds": {k: round(v, 2) for k, v in r.seconds.items()}})
        if n >= 100:
            # rewrites and insertions differ in kind, so each is reported on its own as well
            parts = {"rewrites": list(range(entry["rewrites"])), "insertions": list(range(entry["rewrites"], n))} if "rewrites" in entry else None
            ev = evaluate_patch(loaded, r.patch, evaluated, heldout, parts=parts)
            entry["quality"] = round_metrics(ev["metrics"])
            for part, m in ev.get("parts", {}).items():
                entry[f"quality_{part}"] = round_metrics(m)
        res["memit"][str(n)] = entry
        res[f"peak_rss_mib_after_memit{n}"] = round(peak_rss_mib(), 1)
        last_batch = edits

    res["memit_joint"] = joint_section(loaded, heldout, n_joint, r_layer)
    res["peak_rss_mib_after_memit_joint"] = round(peak_rss_mib(), 1)

    # Batched value optimisation against a per-edit loop on a sample of the same edits.
    step("value optimisation: batched against a per-edit loop")
    edits = last_batch
    hp = EditOptions().memit
    prefixes = context_prefixes(loaded.model, loaded.tok, hp.n_prefixes)
    rows = [build_rows(loaded.tok, e.prompt, e.subject, e.target_new, prefixes) for e in edits]
    t = time.perf_counter()
    optimise_values(loaded.adapter, loaded.tok, m_layers[-1], rows, hp.value)
    batched = time.perf_counter() - t
    sample = 10
    t = time.perf_counter()
    for r in rows[:sample]:
        optimise_values(loaded.adapter, loaded.tok, m_layers[-1], [r], hp.value)
    loop = (time.perf_counter() - t) / sample * len(rows)
    res["value_optimisation"] = {
        "edits": len(rows),
        "batched_seconds": round(batched, 2),
        "per_edit_loop_seconds_extrapolated": round(loop, 2),
        "per_edit_loop_sample": sample,
        "speedup": round(loop / batched, 2),
    }
    res["peak_rss_mib"] = round(peak_rss_mib(), 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
