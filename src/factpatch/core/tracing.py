"""OpenTelemetry tracing: where spans go.

Spans are always made through the OpenTelemetry API; without a provider they cost next to nothing and
go nowhere. `setup()` installs the SDK when the standard variables ask for an exporter:

    OTEL_TRACES_EXPORTER           none (default) | console | otlp  (a comma-separated list is allowed)
    OTEL_EXPORTER_OTLP_ENDPOINT    where OTLP goes (the exporter's own default: localhost:4317)
    OTEL_EXPORTER_OTLP_PROTOCOL    grpc (default) | http/protobuf (_TRACES_ variants win, as usual)
    OTEL_SERVICE_NAME              else factpatch-control-plane / factpatch-shard
    OTEL_SDK_DISABLED=true         no SDK, whatever else is set
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

log = logging.getLogger("factpatch.tracing")

EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
CONTROL_PLANE = "factpatch-control-plane"
SHARD = "factpatch-shard"
EXPORTERS = ("none", "console", "otlp")
PROTOCOLS = ("grpc", "http/protobuf")
# The package an OTLP protocol needs, for the error when it is missing.
_OTLP_PACKAGES = {"grpc": "opentelemetry-exporter-otlp-proto-grpc", "http/protobuf": "opentelemetry-exporter-otlp-proto-http"}


class TracingConfigError(ValueError):
    """An OTEL_* setting this process cannot honour; the message names the variable."""


def exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for, checked: [] when tracing export is off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = env.get(EXPORTER_ENV, "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingConfigError(f"{EXPORTER_ENV}={raw!r}: unknown exporter {unknown[0]!r}; use one of "
                                 f"{', '.join(EXPORTERS)} (or a comma-separated list)")
    chosen = [n for n in dict.fromkeys(names) if n != "none"]
    if "otlp" in chosen:
        _otlp_exporter_class(env)  # a bad protocol or a missing package is said now, at start
    return chosen


def _protocol(env: Mapping[str, str]) -> str:
    for name in PROTOCOL_ENVS:
        raw = env.get(name, "").strip()
        if raw:
            if raw.lower() not in PROTOCOLS:
                raise TracingConfigError(f"{name}={raw!r}: unknown OTLP protocol; use one of {', '.join(PROTOCOLS)}")
            return raw.lower()
    return "grpc"


def _otlp_exporter_class(env: Mapping[str, str]):
    protocol = _protocol(env)
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise TracingConfigError(
            f"{EXPORTER_ENV}=otlp with protocol {protocol} needs the package {_OTLP_PACKAGES[protocol]} "
            f"(pip install {_OTLP_PACKAGES[protocol]}): {e}") from None
    return OTLPSpanExporter


def _resource(default_service: str):
    from importlib.metadata import PackageNotFoundError, version

    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    detected = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when given
    try:
        ours = {SERVICE_VERSION: version("factpatch")}
    except PackageNotFoundError:  # run from a source tree that was never installed
        ours = {}
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        ours[SERVICE_NAME] = default_service
    return detected.merge(Resource(ours))


def setup(default_service: str, env: Mapping[str, str] | None = None):
    """Install the SDK with the exporters the environment names; once per process, at start.

    Returns the provider, or None when export is off (spans then stay no-ops) or another part of the
    process (vLLM's own `--otlp-traces-endpoint`) installed one first: factpatch's spans go there."""
    from opentelemetry import trace

    env = os.environ if env is None else env
    chosen = exporters(env)
    if not chosen:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        log.info("a tracer provider is already installed in this process; factpatch spans go to it")
        return None
    provider = TracerProvider(resource=_resource(default_service))
    for name in chosen:
        if name == "console":  # one span a line as it ends: for a look by hand, not for volume
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter_class(env)()))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s, service %s", ", ".join(chosen), provider.resource.attributes.get("service.name"))
    return provider
