"""The span of one weight swap. The control plane's call to a shard's agent and the shard's own swap use
the same attribute names, so a trace reads alike from either end.

    with swap_span(tracer, "factpatch.swap", kind=SpanKind.CLIENT, shard="s0", from_version=None,
                   to_version="sha256:…") as sw:
        ...
        sw.fail("refused", reason, message)   # else the outcome is "ok"
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

SHARD = "factpatch.shard"
ACTION = "factpatch.swap.action"
FROM_VERSION = "factpatch.swap.from_version"
TO_VERSION = "factpatch.swap.to_version"
OUTCOME = "factpatch.swap.outcome"
REASON = "factpatch.swap.reason"
SECONDS = "factpatch.swap.seconds"
# Outcomes that are not a failure of the swap.
FINE = frozenset({"ok", "unchanged"})


def version_attr(version: str | None) -> str:
    return version or "base"


class SwapRecord:
    def __init__(self, span: trace.Span):
        self.span = span
        self.outcome = "ok"
        self.reason = ""
        self.message = ""

    def fail(self, outcome: str, reason: str = "", message: str = "") -> None:
        self.outcome, self.reason, self.message = outcome, reason, message

    def done(self, outcome: str) -> None:
        self.outcome = outcome


@contextmanager
def swap_span(tracer: trace.Tracer, name: str, *, kind: SpanKind, from_version: str | None, to_version: str | None,
              shard: str | None = None, attributes: dict | None = None) -> Iterator[SwapRecord]:
    attrs = {ACTION: "revert" if to_version is None else "apply", FROM_VERSION: version_attr(from_version),
             TO_VERSION: version_attr(to_version), **(attributes or {})}
    if shard:
        attrs[SHARD] = shard
    t0 = time.perf_counter()
    with tracer.start_as_current_span(name, kind=kind, attributes=attrs) as span:
        rec = SwapRecord(span)
        try:
            yield rec
        except BaseException as e:
            if rec.outcome in FINE:  # the exception itself is recorded by the span
                rec.fail("error", type(e).__name__)
            raise
        finally:
            span.set_attribute(OUTCOME, rec.outcome)
            span.set_attribute(SECONDS, time.perf_counter() - t0)
            if rec.reason:
                span.set_attribute(REASON, rec.reason)
            if rec.outcome not in FINE:
                span.set_status(Status(StatusCode.ERROR, f"{rec.reason or rec.outcome}: {rec.message}".rstrip(": ")))
