"""Probe metrics: per (shard, version) gauges, run counts and durations, patch size, conditions.

No per-edit labels: an edit that stops holding shows as the shard's efficacy falling, and the
probe report (GetProbeReport / `factpatch ctl probe run`) names the prompts that missed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from factpatch.server.metrics import version_label

from .runner import OK, Prober, ProbeResult
from .sets import EDIT, PARAPHRASE, REGRESSION

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ProbeMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.runs = Counter("factpatch_probe_runs", "Probe runs per shard by outcome (ok, skipped_*, failed).",
                            ["shard", "outcome"], registry=registry)
        self.duration = Histogram("factpatch_probe_duration_seconds", "Time a probe run kept a shard busy.",
                                  ["shard"], buckets=DURATION_BUCKETS, registry=registry)
        self.registry = registry
        self.prober: Prober | None = None

    def attach(self, prober: Prober) -> None:
        self.prober = prober
        self.registry.register(_ProbeState(prober))

    def record(self, r: ProbeResult) -> None:
        self.runs.labels(r.shard, r.outcome.lower()).inc()
        if r.outcome == OK:
            self.duration.labels(r.shard).observe(r.duration)


class _ProbeState:
    def __init__(self, prober: Prober):
        self.prober = prober

    def describe(self):
        return []

    def collect(self):
        results, conditions = self.prober.snapshot()
        eff = GaugeMetricFamily("factpatch_probe_efficacy_ratio",
                                "Share of the active patch's edit prompts answering the new value (last run).",
                                labels=["shard", "version"])
        para = GaugeMetricFamily("factpatch_probe_paraphrase_ratio",
                                 "Share of the edits' paraphrases answering the new value (last run).",
                                 labels=["shard", "version"])
        agree = GaugeMetricFamily("factpatch_probe_regression_agreement_ratio",
                                  "Share of the frozen regression prompts still giving the base's answer (last run).",
                                  labels=["shard", "version"])
        last = GaugeMetricFamily("factpatch_probe_last_success_timestamp_seconds", "When the last probe run succeeded.",
                                 labels=["shard"])
        for r in results:
            v = version_label(r.version)
            for family, kind in ((eff, EDIT), (para, PARAPHRASE), (agree, REGRESSION)):
                ratio = r.ratio(kind)
                if ratio is not None:
                    family.add_metric([r.shard, v], ratio)
            last.add_metric([r.shard], r.finished)
        yield from (eff, para, agree, last)

        edits = GaugeMetricFamily("factpatch_patch_edits", "Edits the active patch carries, its parents' included.",
                                  labels=["version"])
        change = GaugeMetricFamily("factpatch_patch_weight_change_ratio",
                                   "‖ΔW‖/‖W‖ of the active patch over its touched weights (stat: max or mean).",
                                   labels=["version", "stat"])
        seen = set()
        for _, version, size in self.prober.active_patches():
            if version in seen:  # one series per version, however many shards serve it
                continue
            seen.add(version)
            v = version_label(version)
            edits.add_metric([v], size.edits)
            if size.relative_max is not None:
                change.add_metric([v, "max"], size.relative_max)
                change.add_metric([v, "mean"], size.relative_mean)
        yield from (edits, change)

        cond = GaugeMetricFamily("factpatch_probe_condition",
                                 "1 while a probe policy condition holds (edit_not_holding, regression_drift, retrain_due).",
                                 labels=["condition", "shard", "version"])
        for c in conditions:
            cond.add_metric([c.type.lower(), c.shard, version_label(c.version)], 1)
        yield cond
