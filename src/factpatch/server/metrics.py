"""Prometheus metrics of the gateway, the monitors and the control plane (names as DESIGN.md says).

Each server owns a CollectorRegistry, so several can live in one process (tests). Labels are
bounded: version ("base" or 12 hex digits of the patch digest; `factpatch_version_info` gives the full
digest), shard, monitor (capped, see MonitorCounts), rollout, never anything per request. The
deployment's own labels (namespace, release, model) are target labels the scrape adds, not written
here: one process serves one release.

`factpatch_monitor_evaluated_total` is not a counter per monitor in memory: a response is evaluated
by every unscoped monitor and by the monitors scoped to the subjects its prompt mentions, so the
gateway counts responses per (scope, version, shard) and the collector derives each monitor's count,
less what was counted before the monitor existed. Thousands of monitors then cost one increment per
response, not thousands. Matches are emitted for every evaluated series, zero included, so the
stale-value rate per version is one PromQL line:

    sum by (version) (rate(factpatch_monitor_matches_total{monitor=~"stale:.*"}[5m]))
      / sum by (version) (rate(factpatch_monitor_evaluated_total{monitor=~"stale:.*"}[5m]))
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from factpatch.core.version_label import version_label

# `*_created` series double every counter and histogram and no dashboard or rule reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SWAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ERROR_REASONS = ("connect", "dropped", "upstream_error", "upstream_5xx", "upstream_broken", "stream_broken",
                 "stream_error", "bad_response", "timeout")


def folded_label(name: str) -> str:
    """The shared label of monitors past the label cap: stale-value monitors keep their prefix so
    `monitor=~"stale:.*"` still pools them; `*` is not a character a monitor name may hold."""
    return "stale:*" if name.startswith("stale:") else "*"


class MonitorCounts:
    """Responses evaluated per (scope, version, shard), and each monitor's starting point.

    The `monitor` label is capped: the first `label_limit` monitors (in the order the live set lists
    them: configured, then API, then stale-value monitors of the newest patches) are exported under
    their own name, the rest summed into `folded_label`. Series stay at most (limit + 2) x versions x
    shards however many edits are stored."""

    def __init__(self, label_limit: int = 1000):
        self.label_limit = label_limit
        self.labels: dict[str, str] = {}
        self.groups: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.matched: defaultdict[tuple[str, str, str], int] = defaultdict(int)  # (monitor, version, shard)
        self._baselines: dict[str, tuple[str, dict[tuple[str, str], int]]] = {}
        self._monitors: list[tuple[str, str]] = []  # (name, scope key)
        self._lock = threading.Lock()

    def record(self, scopes: Iterable[str], version: str, shard: str) -> None:
        for scope in scopes:
            self.groups[(scope, version, shard)] += 1

    def match(self, names: Iterable[str], version: str, shard: str) -> None:
        for name in names:
            self.matched[(name, version, shard)] += 1

    def activate(self, monitors: Iterable[tuple[str, str]]) -> None:
        """A new monitor set is live: monitors new (or rescoped) from now on start counting at zero."""
        snapshot = dict(self.groups)
        with self._lock:
            old = self._baselines
            new = {}
            monitors = list(monitors)
            for name, scope in monitors:
                if name in old and old[name][0] == scope:
                    new[name] = old[name]
                else:
                    new[name] = (scope, {(v, s): n for (sc, v, s), n in snapshot.items() if sc == scope})
            gone = set(old) - set(new)
            fresh = {n for n in new if n not in old}
            for key in [k for k in list(self.matched) if k[0] in gone or k[0] in fresh]:
                self.matched.pop(key, None)  # a monitor that comes back starts again from zero
            self._baselines, self._monitors = new, monitors
            self.labels = {name: name if i < self.label_limit else folded_label(name)
                           for i, (name, _) in enumerate(monitors)}

    def evaluated(self) -> Iterable[tuple[str, str, str, int, int]]:
        """(monitor, version, shard, evaluated, matched) for every series with responses."""
        snapshot = dict(self.groups)
        matched = dict(self.matched)
        by_scope: defaultdict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for (scope, v, s), n in snapshot.items():
            by_scope[scope].append((v, s, n))
        with self._lock:
            monitors, baselines = self._monitors, self._baselines
        for name, scope in monitors:
            base = baselines.get(name, (scope, {}))[1]
            for v, s, n in by_scope.get(scope, ()):
                n -= base.get((v, s), 0)
                if n > 0:
                    yield name, v, s, n, matched.get((name, v, s), 0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, monitor_label_limit: int = 1000):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("factpatch_gateway_requests", "Requests the gateway forwarded, by served version and shard.",
                                ["version", "shard"], registry=r)
        self.errors = Counter("factpatch_gateway_errors",
                              "Failed requests by cause: connect (shard unreachable), dropped (connection dropped "
                              "before an answer on every try), upstream_error, upstream_5xx, upstream_broken, "
                              "stream_broken, stream_error, bad_response, timeout. Every cause starts at 0 with a "
                              "(version, shard)'s first request.",
                              ["version", "shard", "reason"], registry=r)
        self.retries = Counter("factpatch_gateway_retries", "Requests sent again after a refused or dropped connection: to "
                               "another shard of the same version, or the same shard on a new connection.", ["version", "shard"], registry=r)
        self.latency = Histogram("factpatch_gateway_request_duration_seconds",
                                 "Time from receiving a request to the last byte of its response.",
                                 ["version", "shard"], buckets=LATENCY_BUCKETS, registry=r)
        # Streams only: a whole-response latency is confounded by answer length, these are not.
        self.ttft = Histogram("factpatch_gateway_time_to_first_token_seconds",
                              "Streamed requests: time from receiving the request to the first chunk with text.",
                              ["version", "shard"], buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("factpatch_gateway_time_per_output_token_seconds",
                              "Streamed requests: time between the first and the last text chunk, per chunk after the "
                              "first (a chunk is a token on vLLM's streams).",
                              ["version", "shard"], buckets=TOKEN_BUCKETS, registry=r)
        self.apply_seconds = Histogram("factpatch_patch_apply_duration_seconds", "Applying a patch on a shard (agent call).",
                                       ["shard"], buckets=SWAP_BUCKETS, registry=r)
        self.revert_seconds = Histogram("factpatch_patch_revert_duration_seconds", "Reverting a shard to base (agent call).",
                                        ["shard"], buckets=SWAP_BUCKETS, registry=r)
        self.analysis_decisions = Counter("factpatch_analysis_decisions", "Canary analysis decisions.",
                                          ["decision"], registry=r)
        for decision in ("PASS", "FAIL", "INCONCLUSIVE"):  # at zero from the start: a rate, not "no data"
            self.analysis_decisions.labels(decision)
        self.monitor_counts = MonitorCounts(monitor_label_limit)
        self._seen: set[tuple[str, str]] = set()
        self._state = _StateCollector(self.monitor_counts)
        r.register(self._state)

    def sources(self, shards: Callable[[], list] | None = None, rollouts: Callable[[], list] | None = None,
                monitor_count: Callable[[], int] | None = None,
                versions: Callable[[], Iterable[str]] | None = None,
                client_tokens: Callable[[], tuple[bool, int]] | None = None) -> None:
        """Where the state gauges read from (set once the gateway and the database exist)."""
        st = self._state
        st.shards, st.rollouts, st.monitor_count, st.versions = shards, rollouts, monitor_count, versions
        st.client_tokens = client_tokens

    def request_series(self, version: str, shard: str) -> None:
        """Create a (version, shard)'s error and retry series at zero with its first request, so an error
        ratio reads 0, not "no data", until something fails (and alert rules see the series)."""
        if (version, shard) not in self._seen:
            self._seen.add((version, shard))
            for reason in ERROR_REASONS:
                self.errors.labels(version, shard, reason)
            self.retries.labels(version, shard)


class _StateCollector:
    """Gauges read at scrape time: monitors evaluated, shard versions, rollout state."""

    def __init__(self, counts: MonitorCounts):
        self.counts = counts
        self.shards: Callable[[], list] | None = None
        self.rollouts: Callable[[], list] | None = None
        self.monitor_count: Callable[[], int] | None = None
        self.versions: Callable[[], Iterable[str]] | None = None
        self.client_tokens: Callable[[], tuple[bool, int]] | None = None

    def describe(self):
        return []

    def collect(self):
        ev = CounterMetricFamily("factpatch_monitor_evaluated", "Responses each output monitor looked at (once per response).",
                                 labels=["monitor", "version", "shard"])
        hits = CounterMetricFamily("factpatch_monitor_matches", "Responses in which an output monitor matched (once per response).",
                                   labels=["monitor", "version", "shard"])
        evaluated: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        matched: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        labels = self.counts.labels
        for name, v, s, n, k in self.counts.evaluated():
            key = (labels.get(name, name), v, s)
            evaluated[key] += n
            matched[key] += k
        for key, n in evaluated.items():
            ev.add_metric(list(key), n)
            hits.add_metric(list(key), matched[key])
        yield ev
        yield hits
        if self.monitor_count:
            g = GaugeMetricFamily("factpatch_monitors", "Output monitors loaded in the matching engine.")
            g.add_metric([], self.monitor_count())
            yield g
        own = sum(1 for name, label in labels.items() if name == label)
        lab = GaugeMetricFamily("factpatch_monitor_labels",
                                "Monitors exported under their own monitor label (own) and summed into the "
                                "shared `*` / `stale:*` label past max_monitor_labels (folded).", labels=["state"])
        lab.add_metric(["own"], own)
        lab.add_metric(["folded"], len(labels) - own)
        yield lab
        yield GaugeMetricFamily("factpatch_monitor_labels_limit", "max_monitor_labels: monitors exported under "
                                "their own label.", value=self.counts.label_limit)
        if self.versions:
            info = GaugeMetricFamily("factpatch_version_info", "1 for every stored patch: its short version label "
                                     "and full digest.", labels=["version", "digest"])
            for digest in self.versions():
                info.add_metric([version_label(digest), digest], 1)
            yield info
        if self.client_tokens:
            valid, accepted = self.client_tokens()
            yield GaugeMetricFamily("factpatch_client_tokens_file_valid", "1 when the client tokens file as it is now "
                                    "was read; 0 while it is invalid and the tokens of its last valid version are in use.",
                                    value=float(valid))
            yield GaugeMetricFamily("factpatch_client_tokens", "Client tokens this process accepts (the control "
                                    "plane: its clients; a gateway: who may force a route).", value=accepted)
        if self.shards:
            active = GaugeMetricFamily("factpatch_shard_active_version", "1 for the version each shard reports serving.",
                                       labels=["shard", "version"])
            desired = GaugeMetricFamily("factpatch_shard_desired_version", "1 for the version the control plane wants on each shard.",
                                        labels=["shard", "version"])
            at = GaugeMetricFamily("factpatch_shard_at_desired_version", "1 when the shard serves its desired version and is healthy.",
                                   labels=["shard"])
            up = GaugeMetricFamily("factpatch_shard_routable", "1 when the gateway may send the shard traffic.", labels=["shard"])
            for s in self.shards():
                active.add_metric([s.name, version_label(s.version)], 1)
                desired.add_metric([s.name, version_label(s.desired)], 1)
                at.add_metric([s.name], float(s.healthy and s.version == s.desired))
                up.add_metric([s.name], float(s.available))
            yield from (active, desired, at, up)
        if self.rollouts:
            state = GaugeMetricFamily("factpatch_rollout_state", "1 for the state of each rollout active or ended in the last hour.",
                                      labels=["rollout", "patch", "state"])
            share = GaugeMetricFamily("factpatch_rollout_canary_traffic_ratio",
                                      "Share of traffic the gateway sends to the rollout's patched shards.", labels=["rollout"])
            cutoff = time.time() - 3600
            for r, canary_share in self.rollouts():
                if r.active or r.updated >= cutoff:
                    state.add_metric([r.id, version_label(r.patch), r.state], 1)
                if canary_share is not None:
                    share.add_metric([r.id], canary_share)
            yield from (state, share)
