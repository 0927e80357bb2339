"""The shard's own Prometheus series, beside vLLM's `vllm:*` on the same `/metrics`: which patch the
engine serves, whether it is swapping, and how its last weight change went. Scraping one shard tells
its version without asking the control plane.

Read at scrape time from the swap coordinator's state; registered once per API server process in
prometheus_client's default registry, which vLLM's `/metrics` serves (with one API server process;
vLLM's multi-process mode reads only its own collectors).
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from factpatch.core.version_label import version_label

PHASES = ("stage_s", "drain_s", "write_s", "total_s")


class ShardCollector:
    def __init__(self, swap):
        self.swap = swap

    def describe(self):
        return []

    def collect(self):
        st = self.swap.state
        active = GaugeMetricFamily("factpatch_shard_active_version",
                                   "1 for the version this engine serves on every rank (base: the checkpoint).",
                                   labels=["version"])
        active.add_metric([version_label(st.active_version)], 1.0)
        yield active
        if st.active_version:
            info = GaugeMetricFamily("factpatch_version_info", "The active patch's short version label and full digest.",
                                     labels=["version", "digest"])
            info.add_metric([version_label(st.active_version), st.active_version], 1.0)
            yield info
        yield GaugeMetricFamily("factpatch_shard_swapping", "1 while a weight change is in progress.",
                                value=1.0 if st.swapping else 0.0)
        last = GaugeMetricFamily("factpatch_shard_last_swap_seconds",
                                 "Phases of the last weight change: stage, drain, write, total.", labels=["phase"])
        for phase in PHASES:
            if st.last_swap and phase in st.last_swap:
                last.add_metric([phase.removesuffix("_s")], float(st.last_swap[phase]))
        yield last


_registered: ShardCollector | None = None


def register(swap, registry=REGISTRY) -> ShardCollector:
    """Once per process: a second engine in the same process (tests) points the collector at itself."""
    global _registered
    if _registered is None:
        _registered = ShardCollector(swap)
        registry.register(_registered)
    else:
        _registered.swap = swap
    return _registered
