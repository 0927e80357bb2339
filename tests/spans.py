"""Spans the code under test ends, caught with the OpenTelemetry SDK's in-memory exporter.

A process gets one global tracer provider: the first test that asks installs the SDK's, and a switch
keeps spans ended outside a capturing test from piling up.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class _Switched(SimpleSpanProcessor):
    def __init__(self, exporter):
        super().__init__(exporter)
        self.on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            super().on_end(span)


_exporter = InMemorySpanExporter()
_processor = _Switched(_exporter)
_installed = False


class Spans:
    def __init__(self, exporter: InMemorySpanExporter):
        self.exporter = exporter

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def wait(self, name: str, timeout: float = 15.0, where=lambda s: True) -> ReadableSpan:
        """The first ended span of that name that `where` accepts (spans end on other threads)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.named(name) if where(s)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no span {name!r}; ended: {[s.name for s in self.all()]}"
            time.sleep(0.02)


def capture() -> Spans:
    global _installed
    if not _installed:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(_processor)
        _installed = True
    _exporter.clear()
    _processor.on = True
    return Spans(_exporter)


def release() -> None:
    _processor.on = False
    _exporter.clear()
