"""The SERVER span of an agent request that changes weights (apply, revert).

It continues the caller's trace (the control plane sends `traceparent` with each apply and revert), so
the shard's swap shows under the control plane's swap span. Status reads are not traced: the control
plane asks for them every reconcile pass.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

tracer = trace.get_tracer("factpatch.plugin")

STATUS = "http.response.status_code"
REASON = "factpatch.reason"


class AgentSpan:
    def __init__(self, span: trace.Span):
        self.span = span

    def answered(self, response: Any) -> Any:
        """Records the route's answer (a Response, or a dict FastAPI sends as 200) and returns it."""
        status = getattr(response, "status_code", 200)
        self.span.set_attribute(STATUS, status)
        if status >= 400:
            try:
                reason = json.loads(response.body)["error"]["reason"]
            except (AttributeError, KeyError, TypeError, ValueError):
                reason = f"HTTP_{status}"
            self.span.set_attribute(REASON, reason)
            if status >= 500:
                self.span.set_status(Status(StatusCode.ERROR, reason))
        return response


@contextmanager
def agent_span(request: Any, route: str) -> Iterator[AgentSpan]:
    url = request.url
    with tracer.start_as_current_span(
        f"{request.method} {route}", context=propagate.extract(request.headers), kind=SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route, "server.address": url.hostname or "",
                    "server.port": url.port or 0},
    ) as span:
        yield AgentSpan(span)
