"""MonitorService: create, list and delete the gateway's output monitors."""

from __future__ import annotations

import grpc

from factpatch.server.api.convert import ts
from factpatch.server.api.errors import ApiError, invalid, not_found, precondition
from factpatch.server.api.interceptor import call_principal
from factpatch.server.monitors.config import API, CONFIG, LITERAL, PATCH, REGEX, STALE, Monitor, MonitorError
from factpatch.server.monitors.registry import MonitorRegistry
from factpatch.v1 import monitor_pb2, monitor_pb2_grpc

KINDS = {LITERAL: monitor_pb2.MONITOR_KIND_LITERAL, REGEX: monitor_pb2.MONITOR_KIND_REGEX,
         STALE: monitor_pb2.MONITOR_KIND_STALE_VALUE}
SOURCES = {CONFIG: monitor_pb2.MONITOR_SOURCE_CONFIG, API: monitor_pb2.MONITOR_SOURCE_API,
           PATCH: monitor_pb2.MONITOR_SOURCE_PATCH}


def to_pb(m: Monitor) -> monitor_pb2.Monitor:
    return monitor_pb2.Monitor(
        name=m.name, kind=KINDS[m.kind], pattern=m.pattern, ignore_case=m.ignore_case, scope_subject=m.scope_subject,
        source=SOURCES[m.source], patches=list(m.patches), created_by=m.created_by,
        created=ts(m.created) if m.created else None,
    )


def to_api_error(e: MonitorError, within: str = "") -> ApiError:
    md = {"field": within + e.field} if e.field else {}
    if e.position is not None:
        md["position"] = str(e.position)
    if e.reason == "TOO_MANY_MONITORS":
        return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, e.reason, str(e), **md)
    if e.reason == "MONITOR_EXISTS":
        return ApiError(grpc.StatusCode.ALREADY_EXISTS, e.reason, str(e), **md)
    if e.reason == "MONITOR_NOT_FOUND":
        return not_found(e.reason, str(e), **md)
    if e.reason == "MONITOR_NOT_DELETABLE":
        return precondition(e.reason, str(e), **md)
    return invalid(e.reason, str(e), **md)


class MonitorService(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, registry: MonitorRegistry):
        self.registry = registry

    def CreateMonitor(self, request, context):
        m = request.monitor
        kind = {v: k for k, v in KINDS.items()}.get(m.kind)
        if kind not in (LITERAL, REGEX):
            raise invalid("BAD_MONITOR", "monitor.kind must be MONITOR_KIND_LITERAL or MONITOR_KIND_REGEX "
                          "(stale-value monitors come from patches)", field="monitor.kind")
        try:
            created = self.registry.create(
                Monitor(name=m.name, kind=kind, pattern=m.pattern, ignore_case=m.ignore_case,
                        scope_subject=m.scope_subject.strip()), call_principal())
        except MonitorError as e:  # the fields are the request's monitor's
            raise to_api_error(e, "monitor.") from None
        return to_pb(created)

    def ListMonitors(self, request, context):
        self.registry.refresh_patches()  # a patch stored a moment ago lists its stale-value monitors
        mons = self.registry.list()
        if request.kind:
            mons = [m for m in mons if KINDS[m.kind] == request.kind]
        return monitor_pb2.ListMonitorsResponse(monitors=[to_pb(m) for m in mons], limit=self.registry.limit)

    def DeleteMonitor(self, request, context):
        try:
            self.registry.delete(request.name)
        except MonitorError as e:
            raise to_api_error(e) from None
        return monitor_pb2.DeleteMonitorResponse()
