"""Garbage on the wire for every RPC in the protos: bytes that are no message at all, well-formed
messages with random values in every field, and random Authorization headers. Authentication comes
first; then the caller's error gets a status with a reason; nothing fails inside the server."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from factpatch.v1 import fleet_pb2, monitor_pb2, rollout_pb2
from tests.server.helpers import OPERATOR_TOKEN, VIEWER_TOKEN, random_patch, rid

from . import hostile
from . import served as sv
from .conftest import fuzz
from .rpc import all_rpcs, call, error_info

TARGET_BYTES = "grpc_request_bytes"
TARGET_FIELDS = "grpc_request_fields"
TARGET_AUTH = "grpc_authorization"
FOUND_AND_FIXED = {
    TARGET_BYTES: ["bytes that are not the method's message answered INTERNAL ('Exception deserializing request!'), "
                   "before authentication: now UNAUTHENTICATED without a token, else INVALID_ARGUMENT / MALFORMED_REQUEST"],
    TARGET_FIELDS: ["ListRollouts with a negative page_size listed every rollout (now INVALID_ARGUMENT / BAD_PAGE_SIZE)",
                    "StartRollout took NaN for a gate's max_ratio or max_value (now INVALID_ARGUMENT / BAD_GATE)",
                    "CreateMonitor took literal patterns hyperscan cannot compile (a NUL first, thousands of "
                    "non-ASCII characters): the monitor was stored and every later compile failed, at the next "
                    "start too (now INVALID_ARGUMENT / BAD_MONITOR; a stored one is left out of the compile)"],
}
RPCS = all_rpcs()
# the caller's own errors; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, RESOURCE_EXHAUSTED) is the server's
CALLER_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS", "ABORTED", "OUT_OF_RANGE"}


def answer(channel, rpc, request, token, raw: bool) -> str:
    try:
        call(channel, rpc, request, token, timeout=20, raw=raw)
    except grpc.RpcError as e:
        reason, _ = error_info(e)
        assert e.code().name in CALLER_ERRORS | {"UNAUTHENTICATED", "PERMISSION_DENIED"}, (rpc.key, e.code(), e.details())
        assert reason and e.details() and len(e.details().encode()) <= 1024, (rpc.key, e.code(), e.details())
        return f"{e.code().name}/{reason}"
    return "OK"


@fuzz(200)
@given(rpc=st.sampled_from(RPCS), data=st.binary(max_size=200), token=st.sampled_from([OPERATOR_TOKEN, None, VIEWER_TOKEN]))
@example(rpc=next(r for r in RPCS if r.name == "GetShard"), data=b"\xff\xff\xff", token=OPERATOR_TOKEN)
@example(rpc=next(r for r in RPCS if r.name == "RegisterShard"), data=b"\x12\x02\xff\xfe", token=OPERATOR_TOKEN)
@example(rpc=next(r for r in RPCS if r.name == "ImportPatch"), data=b"\x0a\xff", token=OPERATOR_TOKEN)
@example(rpc=next(r for r in RPCS if r.name == "WatchRollout"), data=b"\x0a\x01\xff", token=None)
def test_bytes_that_are_no_message(served, tally, rpc, data, token):
    request = [data] if rpc.client_streaming else data
    got = answer(served.op.channel, rpc, request, token, raw=True)
    if token is None:
        assert got == "UNAUTHENTICATED/UNAUTHENTICATED"
    tally.record(TARGET_BYTES, got)


@st.composite
def random_requests(draw):
    rpc = draw(st.sampled_from(RPCS))
    if rpc.client_streaming:
        msgs = draw(st.lists(hostile.fields(rpc.request.DESCRIPTOR), max_size=3))
        return rpc, [hostile.build(rpc.request, m) for m in msgs]
    return rpc, hostile.build(rpc.request, draw(hostile.fields(rpc.request.DESCRIPTOR)))


@fuzz(300)
@given(case=random_requests())
def test_random_values_in_every_field(served, tally, case):
    rpc, request = case
    tally.record(TARGET_FIELDS, answer(served.op.channel, rpc, request, OPERATOR_TOKEN, raw=False))


ascii_header = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
near_tokens = st.sampled_from([OPERATOR_TOKEN[:-1], OPERATOR_TOKEN + "x", VIEWER_TOKEN.upper()])
schemes = st.sampled_from(["Bearer ", "bearer ", "Basic ", "Bearer", "Token "])


@fuzz(150)
@given(value=ascii_header | st.builds(lambda s, t: s + t, schemes, ascii_header | near_tokens), rpc=st.sampled_from(RPCS))
def test_random_authorization_headers(served, tally, value, rpc):
    """Nothing but the exact 'Bearer <known token>' gets past authentication."""
    md = (("authorization", value),)
    fn = {(False, False): served.op.channel.unary_unary, (False, True): served.op.channel.unary_stream,
          (True, False): served.op.channel.stream_unary}[(rpc.client_streaming, rpc.server_streaming)]
    stub = fn(rpc.path, request_serializer=rpc.request.SerializeToString, response_deserializer=rpc.response.FromString)
    request = iter([rpc.request()]) if rpc.client_streaming else rpc.request()
    try:
        result = stub(request, metadata=md, timeout=10)
        if rpc.server_streaming:
            next(result)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (value, rpc.key, e.code())
        tally.record(TARGET_AUTH, "UNAUTHENTICATED")
        return
    raise AssertionError(f"{rpc.key} answered a caller with authorization {value!r}")


def test_nan_gates_and_uncompilable_literals_are_refused(served, tally):
    op = served.op
    digest = op.push(random_patch({"model.layers.1.mlp.down_proj.weight": (8, 4)}, "sha256:" + "0" * 64)).digest
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="g1", address="http://127.0.0.1:9"))
    for gate in (rollout_pb2.AnalysisGate(metric="error_rate", max_ratio=math.nan),
                 rollout_pb2.AnalysisGate(metric="error_rate", max_ratio=2, max_value=math.nan)):
        with pytest.raises(grpc.RpcError) as e:
            op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, gates=[gate]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_info(e.value) == ("BAD_GATE", {"field": "gates[0]"})
        tally.record(TARGET_FIELDS, "INVALID_ARGUMENT/BAD_GATE")
    for pattern in ("\x00abc".encode().decode("unicode_escape"), "é" * 4096):
        m = monitor_pb2.Monitor(name="lit", kind=monitor_pb2.MONITOR_KIND_LITERAL, pattern=pattern)
        with pytest.raises(grpc.RpcError) as e:
            op(served.monitors.CreateMonitor, monitor_pb2.CreateMonitorRequest(request_id=rid(), monitor=m))
        assert error_info(e.value) == ("BAD_MONITOR", {"field": "monitor.pattern"})
        tally.record(TARGET_FIELDS, "INVALID_ARGUMENT/BAD_MONITOR")


def test_garbage_left_the_server_healthy_and_contained(served, tally):
    tally.fixed.update(FOUND_AND_FIXED)
    sv.assert_healthy(served)
    sv.assert_contained(served)
