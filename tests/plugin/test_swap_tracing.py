"""The shard's side of a swap in traces: the agent's request span continues the control plane's trace and
holds the swap's own span, with versions, outcome and phase timings (fake engine, no vLLM)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from factpatch.plugin.agent import AgentState
from factpatch.plugin.agent_server import build_app
from factpatch.plugin.swap import SwapCoordinator, SwapError
from tests import spans as span_capture
from tests.plugin.test_swap import FakeEngine
from tests.server.helpers import AGENT_TOKEN

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def spans():
    yield span_capture.capture()
    span_capture.release()


def test_a_swap_span_has_versions_outcome_and_phases(spans):
    co = SwapCoordinator(FakeEngine())

    async def go():
        await co.swap(b"x", "sha256:a")
        await co.swap(b"x", "sha256:a")  # already active: nothing happens, and the span says so

    asyncio.run(go())
    first, again = spans.named("factpatch.shard.swap")
    assert first.attributes["factpatch.swap.from_version"] == "base"
    assert first.attributes["factpatch.swap.to_version"] == "sha256:a"
    assert first.attributes["factpatch.swap.action"] == "apply" and first.attributes["factpatch.swap.outcome"] == "ok"
    # every phase the shard records is on the span as recorded, and the span's seconds cover the swap
    phases = {k: v for k, v in co.state.last_swap.items() if v is not None}
    assert {k: first.attributes[f"factpatch.swap.{k}"] for k in phases} == phases
    assert first.attributes["factpatch.swap.seconds"] >= phases["total_s"]
    assert first.attributes["factpatch.swap.drain_timed_out"] is False
    assert again.attributes["factpatch.swap.from_version"] == "sha256:a"
    assert again.attributes["factpatch.swap.outcome"] == "unchanged" and again.status.status_code == StatusCode.UNSET


def test_a_refused_swap_span_names_the_reason(spans):
    co = SwapCoordinator(FakeEngine(fail_stage_rank=1))
    with pytest.raises(SwapError):
        asyncio.run(co.swap(b"x", "sha256:a"))
    s, = spans.named("factpatch.shard.swap")
    assert s.attributes["factpatch.swap.outcome"] == "refused"
    assert s.attributes["factpatch.swap.reason"] == "UNKNOWN_TENSOR" and s.status.status_code == StatusCode.ERROR


def test_the_agent_continues_the_callers_trace_around_the_swap(spans, monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("FACTPATCH_AGENT_TOKEN", AGENT_TOKEN)
    state = AgentState(model="fake", checkpoint=None, swap=SwapCoordinator(FakeEngine()), tensor_parallel_size=1)
    with TestClient(build_app(state)) as client:
        r = client.post("/factpatch/v1/revert", headers={"Authorization": f"Bearer {AGENT_TOKEN}",
                                                         "traceparent": TRACEPARENT})
        assert r.status_code == 200, r.text
        refused = client.post("/factpatch/v1/revert?drain_timeout_s=-1",
                              headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        assert refused.status_code == 400
        client.get("/factpatch/v1/status", headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    route, bad = spans.named("POST /factpatch/v1/revert")
    swap, = spans.named("factpatch.shard.swap")
    assert route.kind == SpanKind.SERVER and route.attributes["http.response.status_code"] == 200
    assert f"{route.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert f"{route.parent.span_id:016x}" == TRACEPARENT.split("-")[2]
    assert swap.parent.span_id == route.context.span_id and swap.attributes["factpatch.swap.action"] == "revert"
    assert bad.attributes["http.response.status_code"] == 400 and bad.attributes["factpatch.reason"] == "MALFORMED"
    assert bad.parent is None
    assert not [s for s in spans.all() if "status" in s.name]  # polled every pass: not traced
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached
