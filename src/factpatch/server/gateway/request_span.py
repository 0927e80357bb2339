"""One OpenTelemetry SERVER span per proxied request.

It continues the client's trace (`traceparent` / `tracestate` in the request), records where the request
went (route, shard, served version), whether it streamed, how often it was retried and how it ended, and
puts its own context in the request to the shard, so the shard's spans are its children.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Iterator

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

tracer = trace.get_tracer("factpatch.server.gateway")

ROUTE = "factpatch.route"
FORCED = "factpatch.route.forced"
SHARD = "factpatch.shard"
VERSION = "factpatch.version"
STREAM = "factpatch.stream"
RETRIES = "factpatch.retries"
STATUS = "http.response.status_code"


class RequestSpan:
    def __init__(self, span: trace.Span):
        self.span = span
        self.retries = 0
        span.set_attribute(RETRIES, 0)

    def upstream_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with this span's trace context in place of whatever trace context the client sent.
        Without a valid context (no tracing, no usable traceparent) the client's headers pass unchanged."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            ours = {k.lower() for k in carrier}
            headers = {k: v for k, v in headers.items() if k.lower() not in ours}
            headers.update(carrier)
        return headers

    def request(self, *, stream: bool, forced: bool) -> None:
        self.span.set_attribute(STREAM, stream)
        self.span.set_attribute(FORCED, forced)

    def retried(self, shard, error: BaseException) -> None:
        self.retries += 1
        self.span.set_attribute(RETRIES, self.retries)
        self.span.add_event("retry", {SHARD: shard.name, "error.type": type(error).__name__})

    def served(self, shard, route: str) -> None:
        self.span.set_attribute(ROUTE, route)
        self.span.set_attribute(SHARD, shard.name)
        self.span.set_attribute(VERSION, shard.version or "base")

    def failed(self, reason: str | None) -> None:
        """How the answer went wrong after a shard took it (the gateway's error reasons), if it did."""
        if reason:
            self.span.set_attribute("error.type", reason)
            if reason != "client_gone":
                self.span.set_status(Status(StatusCode.ERROR, reason))

    def answered(self, status: int) -> None:
        self.span.set_attribute(STATUS, status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


@contextmanager
def request_span(request, route: str) -> Iterator[RequestSpan]:
    """The span of one request to `route`, current for as long as the request is handled."""
    with tracer.start_as_current_span(
        f"{request.method} {route}", context=propagate.extract(request.headers), kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
        record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield RequestSpan(span)
        except (asyncio.CancelledError, ConnectionResetError):  # the client left: not an error of ours
            span.set_attribute("error.type", "client_gone")
            raise
        except Exception as e:  # aiohttp answers 500
            span.record_exception(e)
            span.set_attribute(STATUS, 500)
            span.set_status(Status(StatusCode.ERROR, type(e).__name__))
            raise
