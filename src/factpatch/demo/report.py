"""The demo's report folder: summary.md, charts as PNG, every sample as JSONL, the numbers as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

PHASE_COLOURS = {"baseline": "#eeeeee", "canary": "#fff3c4", "promoted": "#dff0d8", "reverted": "#e8e8f8"}


def _label(version: str) -> str:
    return "base" if version == "base" else "patch " + version.removeprefix("sha256:")[:12]


def stale_rate_chart(samples, path: Path, window: int = 24) -> None:
    """Stale-answer rate per served version over time (a moving window of requests per version)."""
    fig, ax = plt.subplots(figsize=(9, 4))
    phases: dict[str, list[float]] = {}
    for s in samples:
        phases.setdefault(s.phase, []).append(s.t)
    for phase, ts in phases.items():
        ax.axvspan(min(ts), max(ts), color=PHASE_COLOURS.get(phase, "#f4f4f4"), zorder=0)
        ax.text((min(ts) + max(ts)) / 2, 1.04, phase, ha="center", fontsize=9)
    by: dict[str, list] = {}
    for s in sorted(samples, key=lambda s: s.t):
        if s.status == 200:
            by.setdefault(s.version, []).append(s)
    for version, xs in by.items():
        ts, rates = [], []
        for i in range(len(xs)):
            win = xs[max(0, i - window + 1) : i + 1]
            ts.append(xs[i].t)
            rates.append(sum(x.verdict == "stale" for x in win) / len(win))
        ax.plot(ts, rates, label=_label(version), lw=2)
    ax.set_ylim(-0.02, 1.1)
    ax.set_xlabel("seconds since the traffic started")
    ax.set_ylabel(f"stale answers (last {window} requests)")
    ax.set_title("Stale-value rate per served version")
    ax.legend(loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_chart(edit_eval: dict, path: Path) -> None:
    """The patch's gate metrics against their thresholds."""
    rows = [r for r in edit_eval.get("gates", []) if r["value"] is not None]
    if not rows:
        return
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.2))
    for ax, r in zip(axes if len(rows) > 1 else [axes], rows):
        ax.bar([0], [r["value"]], color="#4caf50" if r["passed"] else "#e53935", width=0.5)
        ax.axhline(r["threshold"], color="black", ls="--", lw=1)
        ax.set_title(f"{r['gate']}\n{r['op']} {r['threshold']}", fontsize=9)
        ax.set_xticks([])
        ax.text(0, r["value"], f"{r['value']:.3g}", ha="center", va="bottom", fontsize=9)
    fig.suptitle(f"Edit quality · MEMIT on layers {edit_eval.get('layers')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# What the refactor this demo replays reported for its policy update (its billing traffic, its model):
# shown beside the demo's own figures, not as a target.
SEED_FIGURES = {"efficacy": 0.94, "regression_unchanged": 0.981, "stale_before": 0.41, "stale_after": 0.06}


def replay_figures(outcome) -> dict:
    """The demo's figures in the refactor's terms: efficacy and regression set from the edit's
    evaluation, stale answers on the traffic before the change and after promotion."""
    m = outcome.edit_eval.get("metrics", {})
    before = next((st.get("stale_base") for st in outcome.stages if st.get("stage") == "baseline"), None)
    after = outcome.rollout.get("promoted", {}).get("stale")
    out = {"efficacy": m.get("efficacy"), "regression_unchanged": m.get("regression_unchanged"),
           "stale_before": before, "stale_after": after}
    return out if any(v is not None for v in out.values()) else {}


def write_report(out: Path, outcome, samples) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for s in samples:
            f.write(json.dumps(s.to_json()) + "\n")
    numbers = {"stages": outcome.stages, "edit_eval": outcome.edit_eval, "rollout": outcome.rollout,
               "patch": outcome.patch_digest, "replay": {"original": SEED_FIGURES, "this_run": replay_figures(outcome)}}
    (out / "results.json").write_text(json.dumps(numbers, indent=2, default=str))
    if samples:
        stale_rate_chart(samples, out / "stale_rate.png")
    if outcome.edit_eval:
        quality_chart(outcome.edit_eval, out / "edit_quality.png")

    lines = ["# factpatch demo", "", f"Patch: `{outcome.patch_digest or '-'}`", "", "## Stages", "",
             "| stage | seconds | numbers |", "|---|---|---|"]
    for st in outcome.stages:
        nums = ", ".join(f"{k}={v}" for k, v in st.items() if k not in ("stage", "seconds"))
        lines.append(f"| {st['stage']} | {st['seconds']} | {nums} |")
    if outcome.edit_eval.get("gates"):
        lines += ["", "## Edit quality gates", "", "| gate | value | threshold | passed |", "|---|---|---|---|"]
        for r in outcome.edit_eval["gates"]:
            lines.append(f"| {r['gate']} | {r['value']} | {r['op']} {r['threshold']} | {r['passed']} |")
    mine = replay_figures(outcome)
    if mine:
        lines += ["", "## The policy update beside the original refactor's", "",
                  "| figure | original refactor | this run |", "|---|---|---|"]
        for key, label in (("efficacy", "efficacy"), ("regression_unchanged", "regression set unchanged"),
                           ("stale_before", "stale answers before"), ("stale_after", "stale answers after")):
            ours = mine.get(key)
            lines.append(f"| {label} | {SEED_FIGURES[key]:.1%} | {'-' if ours is None else f'{ours:.1%}'} |")
    if outcome.rollout.get("analysis"):
        lines += ["", "## Canary analysis", "", "| gate | canary | base | outcome |", "|---|---|---|---|"]
        for r in outcome.rollout["analysis"]:
            lines.append(f"| {r['gate']} | {r['canary']:.3f} | {r['base']:.3f} | {r['outcome']} |")
    lines += ["", "## Charts", "", "![stale-value rate](stale_rate.png)", "", "![edit quality](edit_quality.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))
