"""One OpenTelemetry SERVER span per API call, named after the method ("factpatch.v1.PatchService/ImportPatch").

It continues the caller's trace when the call's metadata carries `traceparent`, and records the principal,
the request id, the gRPC status code and the refusal reason (the `factpatch-reason` trailer). Unary calls
make their span current, so the work they start (a revert's swaps) nests under it.
"""

from __future__ import annotations

from typing import Callable, Iterator

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from factpatch.server.api.errors import REASON_KEY

tracer = trace.get_tracer("factpatch.server.api")

PRINCIPAL = "factpatch.principal"
ROLE = "factpatch.role"
REQUEST_ID = "factpatch.request_id"
REASON = "factpatch.reason"
STATUS_CODE = "rpc.grpc.status_code"
# The codes that are the server's fault (OpenTelemetry's RPC conventions); the others are the caller's doing.
SERVER_FAULTS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                           grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})


def _start(method: str, metadata: dict[str, str], principal) -> trace.Span:
    name = method.lstrip("/")
    service, _, short = name.rpartition("/")
    return tracer.start_span(name, context=propagate.extract(metadata), kind=SpanKind.SERVER, attributes={
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": short,
        PRINCIPAL: principal.name if principal else "anonymous", ROLE: principal.role if principal else "",
    })


def _finish(span: trace.Span, context: grpc.ServicerContext, fallback: grpc.StatusCode) -> None:
    """`fallback`: the code when the call was not aborted (OK, or how an escaping exception ends it)."""
    code = context.code() or fallback
    span.set_attribute(STATUS_CODE, code.value[0])
    span.set_attribute("rpc.grpc.status", code.name)
    for key, value in context.trailing_metadata() or ():
        if key == REASON_KEY:
            span.set_attribute(REASON, value)
    if code in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def traced(method: str, metadata: dict[str, str], principal, behaviour: Callable) -> Callable:
    """A unary-response behaviour (request or request iterator, context) inside the call's span."""
    def run(request, context):
        span = _start(method, metadata, principal)
        fallback = grpc.StatusCode.UNKNOWN  # what gRPC answers for an exception that gets out
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                response = behaviour(request, context)
            fallback = grpc.StatusCode.OK
            return response
        finally:
            _finish(span, context, fallback)
    return run


def traced_stream(method: str, metadata: dict[str, str], principal, behaviour: Callable) -> Callable:
    """A streaming-response behaviour inside the call's span, for as long as the stream runs. The span is not
    made current: the stream's steps may run where this context was never attached."""
    def run(request, context) -> Iterator:
        span = _start(method, metadata, principal)
        fallback = grpc.StatusCode.UNKNOWN
        try:
            yield from behaviour(request, context)
            fallback = grpc.StatusCode.OK
        except GeneratorExit:  # closed before its end: the client went away
            fallback = grpc.StatusCode.CANCELLED
            raise
        finally:
            _finish(span, context, fallback)
    return run


def note_request_id(request_id: str) -> None:
    """The request id of the call whose span is current (mutating calls carry one)."""
    if request_id:
        trace.get_current_span().set_attribute(REQUEST_ID, request_id)
