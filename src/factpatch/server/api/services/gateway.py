"""GatewayService: the routing state for gateway processes (`factpatch gateway`), and their traffic back.

A snapshot is the whole state (a fleet's shards, splits and monitors are small), sent once at the
start of a watch and again after each change: a gateway that missed some never has to reconcile
deltas, it replaces what it had. Every watch wakes on every change of the state database, so the
snapshot is built once per state (database generation, swaps begun and ended, compiled monitors) and
shared by all of them, not once per watching gateway.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

from factpatch.server.api.errors import ApiError, invalid
from factpatch.server.control.analysis import Observation, Observations
from factpatch.server.control.gateway_fleet import RemoteGateways
from factpatch.server.gateway.routing import SwapTracker, build_table
from factpatch.server.monitors.registry import MonitorRegistry
from factpatch.server.state.db import Database
from factpatch.server.state.store import valid_digest
from factpatch.v1 import gateway_pb2, gateway_pb2_grpc

MAX_GATEWAY_ID = 128
MAX_SAMPLES = 10_000  # per report; a gateway sends at most 5,000
MAX_NAME = 256  # shard, monitor and subject names in a report
MAX_LABELS = 1_000  # monitors matched / subjects mentioned by one sample
HEARTBEAT_S = 5.0  # a snapshot at least this often, so a gateway can tell a quiet stream from a dead one


def gateway_id(value: str) -> str:
    if not value or len(value) > MAX_GATEWAY_ID or not value.isprintable():
        raise invalid("BAD_GATEWAY_ID", f"gateway_id must be 1 to {MAX_GATEWAY_ID} printable characters, got {value!r}",
                      field="gateway_id")
    return value


def _bad(field: str, why: str) -> ApiError:
    return invalid("BAD_TRAFFIC_REPORT", f"{field} {why}", field=field)


def _name(value: str, field: str) -> None:
    if not value or len(value) > MAX_NAME or not value.isprintable():
        raise _bad(field, f"must be 1 to {MAX_NAME} printable characters, got {value[:80]!r}")


def check_report(request: gateway_pb2.ReportTrafficRequest) -> None:
    """Refuses a report any of whose values canary analysis could not use, naming the field."""
    if len(request.samples) > MAX_SAMPLES:
        raise _bad("samples", f"holds {len(request.samples)} samples; at most {MAX_SAMPLES} per report")
    for i, s in enumerate(request.samples):
        at = f"samples[{i}]"
        if not (math.isfinite(s.at) and s.at > 0):
            raise _bad(f"{at}.at", f"must be a time in Unix seconds, got {s.at!r}")
        if s.version and not valid_digest(s.version):
            raise _bad(f"{at}.version", f"must be empty (base) or a patch digest, got {s.version[:80]!r}")
        _name(s.shard, f"{at}.shard")
        if not (math.isfinite(s.latency_s) and s.latency_s >= 0):
            raise _bad(f"{at}.latency_s", f"must be seconds >= 0, got {s.latency_s!r}")
        if s.HasField("ttft_s") and not (math.isfinite(s.ttft_s) and s.ttft_s >= 0):
            raise _bad(f"{at}.ttft_s", f"must be seconds >= 0, got {s.ttft_s!r}")
        for field in ("matched_monitors", "mentioned_subjects"):
            values = getattr(s, field)
            if len(values) > MAX_LABELS:
                raise _bad(f"{at}.{field}", f"holds {len(values)} names; at most {MAX_LABELS}")
            for j, v in enumerate(values):
                _name(v, f"{at}.{field}[{j}]")
    for key in request.swap_marks:
        _name(key, f"swap_marks[{key[:40]!r}]")


class GatewayService(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, db: Database, swaps: SwapTracker, monitors: MonitorRegistry, observations: Observations,
                 gateways: RemoteGateways):
        self.db, self.swaps, self.monitors = db, swaps, monitors
        self.observations, self.gateways = observations, gateways
        self.instance = uuid.uuid4().hex  # tells a gateway that the control plane restarted
        self._shared_lock = threading.Lock()
        self._shared: tuple[tuple[int, int], object, gateway_pb2.RoutingSnapshot] | None = None
        self.builds = 0  # snapshots built: once per state, however many gateways watch

    def shared_snapshot(self) -> gateway_pb2.RoutingSnapshot:
        """The snapshot of the current state, built once for every watch that asks for it. The state is
        read before the build, so a snapshot is never older than the state it is kept for (a change
        during the build makes the next caller build again). A caller that read the state before the
        kept snapshot's gets that newer one: both counters only grow, and a kept snapshot is never
        replaced by an older one. Callers must not modify it."""
        (gen, swaps), compiled = (self.db.generation, self.swaps.version), self.monitors.compiled
        with self._shared_lock:
            if self._shared is not None and self._shared[1] is compiled:
                kept_gen, kept_swaps = self._shared[0]
                if kept_gen >= gen and kept_swaps >= swaps:
                    return self._shared[2]
            key = (gen, swaps)
            snap = self.snapshot()
            self._shared = (key, compiled, snap)
            return snap

    def snapshot(self) -> gateway_pb2.RoutingSnapshot:
        self.builds += 1
        t = build_table(self.db)
        compiled = self.monitors.compiled
        shards = []
        for v in t.shards.values():
            shards.append(gateway_pb2.RoutedShard(
                name=v.name, url=v.url, version=v.version, desired=v.desired, healthy=v.healthy,
                blocked=self.swaps.blocked_at(v.name, t.generation), swap_mark=self.swaps.mark_of(v.name) or 0))
        return gateway_pb2.RoutingSnapshot(
            generation=t.generation, shards=shards, base=list(t.base), control_plane_id=self.instance,
            splits=[gateway_pb2.RoutedSplit(rollout_id=s.rollout_id, patch=s.patch, canary=list(s.canary),
                                            canary_share=s.canary_share) for s in t.splits],
            monitors=[gateway_pb2.RoutedMonitor(name=m.name, kind=m.kind, pattern=m.pattern, ignore_case=m.ignore_case,
                                                scope_subject=m.scope_subject, source=m.source, patches=list(m.patches))
                      for m in compiled.monitors],
            max_monitor_labels=self.monitors.config.max_monitor_labels)

    def WatchRouting(self, request, context):
        name = gateway_id(request.gateway_id)
        with self.gateways.watching(name):
            last, sent_at = None, 0.0
            while context.is_active():
                gen = self.db.generation  # read before the snapshot: a change while building wakes the wait
                snap = self.shared_snapshot()
                content = gateway_pb2.RoutingSnapshot()
                content.CopyFrom(snap)
                content.generation = 0  # most writes (audit records) change nothing a gateway routes by
                if content != last or time.monotonic() - sent_at >= HEARTBEAT_S:
                    last, sent_at = content, time.monotonic()
                    yield snap
                self.db.wait_for_change(gen, 1.0)

    def ReportTraffic(self, request, context):
        name = gateway_id(request.gateway_id)
        check_report(request)  # all or nothing: a bad sample keeps the whole report out of the analysis
        for s in request.samples:
            self.observations.add(Observation(
                s.at, s.version, s.shard, s.failed, s.latency_s, frozenset(s.matched_monitors),
                frozenset(s.mentioned_subjects), s.ttft_s if s.HasField("ttft_s") else None))
        self.gateways.report(name, dict(request.swap_marks))
        return gateway_pb2.ReportTrafficResponse(accepted=len(request.samples))
