"""OpenTelemetry spans of the control plane: one per API call, one per weight swap, one per gateway request,
each continuing the caller's trace and handing its own context on (to the shard's agent, to the shard's
OpenAI server). The shards here are a small HTTP stand-in that answers like one and records what it got."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from factpatch.core import tracing
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.gateway.app import GatewayConfig
from factpatch.v1 import fleet_pb2, patch_pb2, rollout_pb2
from tests import spans as span_capture

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, random_patch, rid, write_tokens

W = "model.layers.1.mlp.down_proj.weight"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans():
    yield span_capture.capture()
    span_capture.release()


def parent_of(traceparent: str) -> tuple[int, int]:
    """(trace id, span id) a W3C traceparent header names."""
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


class FakeShard:
    """An agent and an OpenAI server on one port: status, apply, revert, completions; records the headers."""

    def __init__(self):
        self.version: str | None = None
        self.refuse: str | None = None  # a reason every apply is refused with
        self.seen: list[tuple[str, dict[str, str]]] = []
        shard = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self) -> dict:
                return {"active_version": shard.version, "swapping": False, "model": "fake",
                        "base_fingerprint": "sha256:" + "0" * 64}

            def do_GET(self):
                self._answer(self._status())

            def do_POST(self):
                path = self.path.split("?")[0]
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                shard.seen.append((path, {k.lower(): v for k, v in self.headers.items()}))
                if path == "/factpatch/v1/apply" and shard.refuse:
                    self._answer({"error": {"reason": shard.refuse, "message": "not this base"}}, 409)
                elif path == "/factpatch/v1/apply":
                    shard.version = self.headers["X-Factpatch-Digest"]
                    self._answer(self._status())
                elif path == "/factpatch/v1/revert":
                    shard.version = None
                    self._answer(self._status())
                else:
                    self._answer({"id": "cmpl-1", "object": "text_completion",
                                  "choices": [{"index": 0, "text": " 30 days", "finish_reason": "length"}]})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def headers_of(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.seen if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stack(tmp_path):
    """A control plane with its gateway over one stand-in shard s0, routable."""
    shard = FakeShard()
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, reconcile_interval=0.1, shards={"s0": f"{shard.url},{shard.url}"},
        gateway=GatewayConfig(listen="127.0.0.1:0"),
    ))
    srv.start()
    op = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    try:
        deadline = time.monotonic() + 30
        while not any(v.available for v in srv.gateway.router.shards()):
            assert time.monotonic() < deadline, "the stand-in shard never became routable"
            time.sleep(0.05)
        yield srv, op, shard
    finally:
        op.close()
        srv.stop(0)
        shard.close()


def test_an_api_call_has_a_span_named_after_its_method_with_principal_and_status(control_plane, op, anon, spans):
    op(op.patches.ListPatches, patch_pb2.ListPatchesRequest())
    s = spans.wait("factpatch.v1.PatchService/ListPatches")
    assert s.kind == SpanKind.SERVER
    assert s.attributes["rpc.system"] == "grpc" and s.attributes["rpc.method"] == "ListPatches"
    assert s.attributes["rpc.service"] == "factpatch.v1.PatchService"
    assert s.attributes["factpatch.principal"] == "release-bot" and s.attributes["factpatch.role"] == "operator"
    assert s.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert s.parent is None  # nothing to continue

    with pytest.raises(grpc.RpcError):
        anon(anon.patches.ListPatches, patch_pb2.ListPatchesRequest())
    refused = spans.wait("factpatch.v1.PatchService/ListPatches", where=lambda x: x is not s)
    assert refused.attributes["factpatch.principal"] == "anonymous"
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert refused.attributes["factpatch.reason"] == "UNAUTHENTICATED"
    assert refused.status.status_code == StatusCode.UNSET  # the caller's mistake, not the server's fault


def test_mutating_calls_carry_their_request_id_and_refusals_their_reason(control_plane, op, spans):
    request_id = rid()
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=request_id, name="a", address="http://127.0.0.1:9"))
    s = spans.wait("factpatch.v1.FleetService/RegisterShard")
    assert s.attributes["factpatch.request_id"] == request_id
    assert s.attributes["rpc.grpc.status_code"] == 0

    upload_id = rid()  # ImportPatch, a client stream: its request id comes in the stream's header message
    op.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64), request_id=upload_id)
    s = spans.wait("factpatch.v1.PatchService/ImportPatch")
    assert s.attributes["factpatch.request_id"] == upload_id and s.attributes["rpc.grpc.status_code"] == 0

    with pytest.raises(grpc.RpcError) as ei:
        op(op.patches.GetPatch, patch_pb2.GetPatchRequest(digest="sha256:" + "1" * 64))
    s = spans.wait("factpatch.v1.PatchService/GetPatch")
    assert s.attributes["rpc.grpc.status_code"] == ei.value.code().value[0] == grpc.StatusCode.NOT_FOUND.value[0]
    assert s.attributes["factpatch.reason"]


def test_a_call_with_a_traceparent_continues_that_trace(control_plane, op, spans):
    op.patches.ListPatches(patch_pb2.ListPatchesRequest(), metadata=op.md + (("traceparent", TRACEPARENT),))
    s = spans.wait("factpatch.v1.PatchService/ListPatches")
    assert (s.context.trace_id, s.parent.span_id) == parent_of(TRACEPARENT)
    assert s.parent.is_remote


def test_a_streamed_call_has_a_span_for_the_whole_stream(control_plane, op, spans):
    r = op(op.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest())
    assert not r.rollouts
    with pytest.raises(grpc.RpcError) as ei:
        list(op.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id="ro-none"), metadata=op.md, timeout=10))
    s = spans.wait("factpatch.v1.RolloutService/WatchRollout")
    assert s.attributes["rpc.grpc.status_code"] == ei.value.code().value[0]


def test_the_gateway_continues_the_clients_trace_and_hands_a_child_context_to_the_shard(stack, spans):
    srv, _, shard = stack
    r = httpx.post(f"http://127.0.0.1:{srv.gateway.port}/v1/completions", timeout=30,
                   headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
                   json={"model": "fake", "prompt": "The refund period of Harbor Support is", "max_tokens": 4})
    assert r.status_code == 200, r.text
    s = spans.wait("POST /v1/completions")
    assert s.kind == SpanKind.SERVER
    assert (s.context.trace_id, s.parent.span_id) == parent_of(TRACEPARENT)
    assert s.attributes["http.route"] == "/v1/completions" and s.attributes["http.response.status_code"] == 200
    assert s.attributes["factpatch.shard"] == "s0" and s.attributes["factpatch.version"] == "base"
    assert s.attributes["factpatch.route"] == "base" and s.attributes["factpatch.stream"] is False
    assert s.attributes["factpatch.retries"] == 0
    upstream = shard.headers_of("/v1/completions")[-1]
    # the shard's request is a child of the gateway's span, in the client's trace, with its trace state
    assert parent_of(upstream["traceparent"]) == (s.context.trace_id, s.context.span_id)
    assert upstream["tracestate"] == "vendor=abc"


def test_a_gateway_request_without_a_trace_starts_one_and_bad_requests_are_spanned_too(stack, spans):
    srv, _, shard = stack
    url = f"http://127.0.0.1:{srv.gateway.port}"
    r = httpx.post(url + "/v1/completions", json={"model": "fake", "prompt": "x", "stream": False}, timeout=30)
    assert r.status_code == 200
    s = spans.wait("POST /v1/completions")
    assert s.parent is None
    assert parent_of(shard.headers_of("/v1/completions")[-1]["traceparent"]) == (s.context.trace_id, s.context.span_id)

    spans.exporter.clear()
    r = httpx.post(url + "/v1/chat/completions", json={"model": "fake", "messages": []}, timeout=30)
    assert r.status_code == 400
    s = spans.wait("POST /v1/chat/completions")
    assert s.attributes["http.response.status_code"] == 400 and "factpatch.shard" not in s.attributes


def test_a_swap_has_a_span_with_shard_versions_and_outcome_and_the_shard_hears_its_context(stack, spans):
    srv, op, shard = stack
    digest = op.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64)).digest
    op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, canary_shards=["s0"]))
    s = spans.wait("factpatch.swap", timeout=30, where=lambda x: x.attributes["factpatch.swap.to_version"] == digest)
    assert s.kind == SpanKind.CLIENT
    assert s.attributes["factpatch.shard"] == "s0" and s.attributes["factpatch.swap.action"] == "apply"
    assert s.attributes["factpatch.swap.from_version"] == "base"
    assert s.attributes["factpatch.swap.outcome"] == "ok"
    # the span's seconds cover the agent call that the apply histogram timed (one apply on s0 so far)
    called = srv.metrics.registry.get_sample_value("factpatch_patch_apply_duration_seconds_sum", {"shard": "s0"})
    assert called is not None and s.attributes["factpatch.swap.seconds"] >= called
    assert s.attributes["factpatch.swap.trigger"] == "reconcile"
    applied = shard.headers_of("/factpatch/v1/apply")[-1]
    assert parent_of(applied["traceparent"]) == (s.context.trace_id, s.context.span_id)

    # RevertToBase swaps from the API call's own threads: its swap spans sit under the call's span
    op(op.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()), timeout=30)
    call = spans.wait("factpatch.v1.RolloutService/RevertToBase")
    back = spans.wait("factpatch.swap", where=lambda x: x.attributes["factpatch.swap.action"] == "revert")
    assert back.parent.span_id == call.context.span_id and back.context.trace_id == call.context.trace_id
    assert back.attributes["factpatch.swap.from_version"] == digest
    assert back.attributes["factpatch.swap.to_version"] == "base" and back.attributes["factpatch.swap.outcome"] == "ok"
    assert parent_of(shard.headers_of("/factpatch/v1/revert")[-1]["traceparent"])[1] == back.context.span_id


def test_a_refused_swap_says_so_on_its_span(stack, spans):
    srv, op, shard = stack
    shard.refuse = "BASE_MISMATCH"
    digest = op.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64)).digest
    op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, canary_shards=["s0"]))
    s = spans.wait("factpatch.swap", timeout=30)
    assert s.attributes["factpatch.swap.outcome"] == "refused" and s.attributes["factpatch.swap.reason"] == "BASE_MISMATCH"
    assert s.status.status_code == StatusCode.ERROR and "not this base" in s.status.description
    assert s.attributes["factpatch.swap.to_version"] == digest and s.attributes["factpatch.shard"] == "s0"


def test_an_unknown_exporter_is_refused_naming_the_variable():
    with pytest.raises(tracing.TracingConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        tracing.exporters({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(tracing.TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "smoke"})
    assert tracing.exporters({}) == [] and tracing.exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) == []
    assert tracing.setup(tracing.CONTROL_PLANE, {}) is None  # off by default: no SDK installed


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_the_console_exporter_prints_spans_under_the_default_or_given_service_name():
    code = ("from factpatch.core import tracing; from opentelemetry import trace\n"
            "p = tracing.setup(tracing.SHARD)\n"
            "trace.get_tracer('t').start_span('hello').end(); p.shutdown()")
    out = _run(code, OTEL_TRACES_EXPORTER="console")
    assert out.returncode == 0, out.stderr
    assert '"name": "hello"' in out.stdout and '"service.name": "factpatch-shard"' in out.stdout
    out = _run(code, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="shard-7")
    assert '"service.name": "shard-7"' in out.stdout


def test_serve_and_shard_refuse_an_unknown_exporter_before_starting(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from factpatch.cli import main; main()", "serve",
                          "--client-tokens-file", str(write_tokens(tmp_path / "tokens.yaml")), "--state-dir", str(tmp_path / "state"),
                          "--listen", "127.0.0.1:0", "--gateway-listen", "off"],
                         env={**os.environ, "OTEL_TRACES_EXPORTER": "jaeger", "FACTPATCH_AGENT_TOKEN": AGENT_TOKEN},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "OTEL_TRACES_EXPORTER='jaeger'" in out.stderr, out.stderr
    assert not (tmp_path / "state").exists()

    from factpatch.plugin.shard_cli import shard_command

    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        shard_command("/m", env={"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN, "OTEL_TRACES_EXPORTER": "jaeger"})
