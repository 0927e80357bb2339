"""`--layers auto` against an exhaustive sweep of contiguous layer windows on a small batch.

The sweep uses ROME, whose windows are single layers, so every window the model has is tried; the
batch is small to keep the test short. Auto and the sweep run with the same options and seed, so the
metrics of auto's choice are those the sweep measured for the same layers.
"""

from __future__ import annotations

from factpatch.editor.auto_layers import candidates
from factpatch.editor.pipeline import EditOptions, evaluate_patch, run_edit

from .conftest import fixture_edits


def test_auto_matches_the_best_contiguous_window(loaded, world):
    edits = fixture_edits(world, 4, seed=41)
    opts = dict(method="rome", n_samples=400)
    sweep = {}
    for layer in range(loaded.adapter.n_layers):
        patch = run_edit(loaded, edits, EditOptions(layers=[layer], **opts)).patch
        sweep[layer] = evaluate_patch(loaded, patch, edits, [])["metrics"]
    best = max(sweep.values(), key=lambda m: (m["efficacy"], m["neighbours_unchanged"]))

    result = run_edit(loaded, edits, EditOptions(layers="auto", **opts))
    chosen = result.layers
    report = result.patch.manifest["hparams"]["layer_choice"]
    assert report["chosen"] == list(chosen) == result.patch.manifest["layers"]
    assert len(report["mlp_effect_at_subject_last"]) == loaded.adapter.n_layers
    assert all("efficacy" in c["metrics"] for c in report["candidates"])
    got = sweep[chosen[0]]
    assert got["efficacy"] >= best["efficacy"] - 0.02, (chosen, got, sweep)
    assert got["neighbours_unchanged"] >= best["neighbours_unchanged"] - 0.01, (chosen, got, sweep)


def test_memit_candidates_are_windows_around_the_trace_peak():
    profile = [0.0, 0.1, 0.2, 0.5, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    cands = candidates(profile, "memit")
    assert cands[0] == [3]
    assert all(c == list(range(c[0], c[-1] + 1)) for c in cands)  # contiguous
    assert all(c[0] <= 4 and c[-1] >= 3 for c in cands)  # hold the peak or start just after it
    assert max(len(c) for c in cands) <= 6
    assert candidates(profile, "rome") == [[3], [4], [2]]
