"""A gateway process's link to the control plane: it follows the routing watch and reports traffic.

    router = Router(None, SwapTracker())
    monitors = FollowedMonitors(metrics)
    link = ControlLink(channel, token, "gateway-0", router, monitors)
    gateway = Gateway(cfg, router, monitors, metrics, observations=link)
    gateway.start(); link.start()   # the link keeps the router and monitors current

The watch replaces the routing table, the swap marks and the monitors with each snapshot. When the
control plane goes away the gateway keeps the last snapshot and serves by it; the link reconnects
with backoff and the next snapshot replaces everything. Traffic samples wait in a bounded buffer
until a report is accepted, so canary analysis loses nothing over a short outage. A swap mark is
acknowledged as soon as no request is in flight on the shard, without waiting for the next report.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Gauge

from factpatch.server.control.analysis import Observation
from factpatch.server.gateway.routing import Router, ShardView, Split, Table
from factpatch.server.metrics import Metrics
from factpatch.server.monitors.config import Monitor
from factpatch.server.monitors.engine import CompiledMonitors
from factpatch.v1 import gateway_pb2, gateway_pb2_grpc

log = logging.getLogger("factpatch.gateway")

REPORT_INTERVAL_S = 0.5
MAX_SAMPLES_PER_REPORT = 5000
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # between reconnects; the last repeats


class FollowedMonitors:
    """The monitor set the control plane sent, compiled here; recompiled only when it changes."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.compiled = CompiledMonitors([])
        self._specs: tuple = ()

    def update(self, specs, label_limit: int) -> None:
        key = tuple((m.name, m.kind, m.pattern, m.ignore_case, m.scope_subject, m.source, tuple(m.patches))
                    for m in specs)
        if key == self._specs:
            return
        monitors = [Monitor(name=n, kind=k, pattern=p, ignore_case=ic, scope_subject=sc, source=src, patches=pt)
                    for n, k, p, ic, sc, src, pt in key]
        compiled = CompiledMonitors(monitors)  # the control plane compiled the same set already
        counts = self.metrics.monitor_counts
        counts.label_limit = label_limit or counts.label_limit
        counts.activate((m.name, m.scope_subject.lower()) for m in monitors)
        self.compiled, self._specs = compiled, key


def table_of(snap: gateway_pb2.RoutingSnapshot) -> Table:
    shards = {s.name: ShardView(s.name, s.url, s.version, s.desired, s.healthy, s.healthy and s.desired == s.version)
              for s in snap.shards}
    splits = tuple(Split(s.rollout_id, s.patch, tuple(s.canary), s.canary_share) for s in snap.splits)
    return Table(snap.generation, shards, splits, tuple(snap.base))


class ControlLink:
    """What keeps a gateway process's router and monitors current (routing state in), and its traffic
    sink (samples out)."""

    def __init__(self, channel: grpc.Channel, token: str | Callable[[], str], gateway_id: str, router: Router,
                 monitors: FollowedMonitors, *, max_buffered: int = 200_000):
        self.stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        # a callable (core.tokens.TokenFile) is asked at every call: a rotated token is sent from the
        # next reconnect or report on, without a restart
        self._token = token if callable(token) else (lambda: token)
        self.gateway_id = gateway_id
        self.router, self.swaps, self.monitors = router, router.swaps, monitors
        self.swaps.on_idle = self._report_soon
        self.samples: deque[gateway_pb2.TrafficSample] = deque(maxlen=max_buffered)
        self.connected = threading.Event()
        self.control_plane_id = ""
        self.snapshots = 0
        self._stop = threading.Event()
        self._report_now = threading.Event()
        self._call = None
        self._threads: list[threading.Thread] = []

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._token()}"),)

    # lifecycle

    def start(self) -> None:
        for target, name in ((self._watch, "gateway-watch"), (self._report, "gateway-report")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._report_now.set()
        if self._call is not None:
            self._call.cancel()
        for t in self._threads:
            t.join(timeout=5)

    def export(self, registry: CollectorRegistry) -> None:
        """The link's state as gauges read at scrape time."""
        Gauge("factpatch_gateway_control_plane_connected", "1 while the routing watch to the control plane is open",
              registry=registry).set_function(lambda: float(self.connected.is_set()))
        Gauge("factpatch_gateway_routing_generation", "State generation of the routing snapshot in use",
              registry=registry).set_function(lambda: float(self.router.table.generation))
        Gauge("factpatch_gateway_unreported_samples", "Traffic samples waiting for the control plane to accept them",
              registry=registry).set_function(lambda: float(len(self.samples)))

    # TrafficSink

    def add(self, o: Observation) -> None:
        sample = gateway_pb2.TrafficSample(
            at=o.t, version=o.version, shard=o.shard, failed=o.error, latency_s=o.latency_s,
            matched_monitors=sorted(o.matched), mentioned_subjects=sorted(o.mentioned))
        if o.ttft is not None:
            sample.ttft_s = o.ttft
        self.samples.append(sample)

    # the watch

    def apply(self, snap: gateway_pb2.RoutingSnapshot) -> None:
        marks = {s.name: s.swap_mark for s in snap.shards if s.blocked}
        # Block newly marked shards before the table changes and free the others after it: a shard
        # is never routed to under a version the new table has not confirmed.
        self.swaps.follow({**self.swaps.marks, **marks})
        self.router.install(table_of(snap))
        self.swaps.follow(marks)
        self.monitors.update(snap.monitors, snap.max_monitor_labels)
        if snap.control_plane_id != self.control_plane_id:
            log.info("following control plane %s (generation %d)", snap.control_plane_id, snap.generation)
            self.control_plane_id = snap.control_plane_id
        self.snapshots += 1
        if marks:
            self._report_now.set()  # acknowledge swaps without waiting for the next report

    def _watch(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._call = self.stub.WatchRouting(gateway_pb2.WatchRoutingRequest(gateway_id=self.gateway_id),
                                                    metadata=self.md)
                for snap in self._call:
                    self.apply(snap)
                    if not self.connected.is_set():
                        self.connected.set()
                        self._report_now.set()
                    failures = 0
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    log.error("the control plane refused this gateway's token: %s", e.details())
                elif failures == 0:
                    log.warning("lost the control plane (%s); serving with the routing state of generation %d",
                                e.code().name, self.router.table.generation)
            self.connected.clear()
            self._stop.wait(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1

    # reports

    def _report_soon(self) -> None:
        self._report_now.set()

    def _report(self) -> None:
        while not self._stop.is_set():
            self._report_now.wait(REPORT_INTERVAL_S)
            self._report_now.clear()
            if self._stop.is_set() or not self.connected.is_set():
                continue
            batch = [self.samples.popleft() for _ in range(min(len(self.samples), MAX_SAMPLES_PER_REPORT))]
            req = gateway_pb2.ReportTrafficRequest(gateway_id=self.gateway_id, samples=batch,
                                                   swap_marks=self.swaps.acknowledged())
            try:
                self.stub.ReportTraffic(req, metadata=self.md, timeout=5)
            except grpc.RpcError as e:
                self.samples.extendleft(reversed(batch))  # kept for the next report (the buffer is bounded)
                log.debug("report not accepted: %s", e.code().name)
            if len(self.samples) >= MAX_SAMPLES_PER_REPORT:
                self._report_now.set()

