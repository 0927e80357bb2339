"""Analysis gates answered by Prometheus, checked before anything starts: a query Prometheus cannot
parse, a query on another metric, no Prometheus configured or none reachable are refused, naming the
field; once running, a Prometheus that cannot be reached is inconclusive, never a pass."""

from __future__ import annotations

import grpc
import pytest

from factpatch.harness.shard_process import free_port
from factpatch.server.api.errors import reason_of
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.control.prometheus_gate import PrometheusQueries, fill
from factpatch.v1 import fleet_pb2, rollout_pb2

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, random_patch, rid, write_tokens

W = "model.layers.1.mlp.down_proj.weight"
STALE = ('sum(rate(factpatch_monitor_matches_total{monitor=~"stale:.*", version=~"$version", shard=~"$shards"}[$window]))'
         ' / sum(rate(factpatch_monitor_evaluated_total{monitor=~"stale:.*", version=~"$version", shard=~"$shards"}[$window]))')


@pytest.fixture
def plane(tmp_path):
    """Start a control plane with one registered shard and a stored patch, given a Prometheus URL."""
    started = []

    def start(prometheus_url: str | None):
        d = tmp_path / f"cp{len(started)}"
        d.mkdir()
        srv = ControlPlaneServer(ServeConfig(state_dir=d / "state", listen="127.0.0.1:0",
                                             tokens_file=write_tokens(d / "tokens.yaml"),
                                             agent_token=AGENT_TOKEN, prometheus_url=prometheus_url))
        srv.start()
        cl = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
        started.append((srv, cl))
        cl(cl.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="s0",
                                                                   address="http://127.0.0.1:9"))
        digest = cl.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64)).digest
        return cl, digest

    yield start
    for srv, cl in started:
        cl.close()
        srv.stop(0)


def refused(cl, digest, gate) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, gates=[gate]))
    assert not cl(cl.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest()).rollouts  # nothing started
    return e.value


def field_of(e: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    for d in rpc_status.from_call(e).details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            return info.metadata.get("field", "")
    return ""


def test_gates_are_checked_by_prometheus_before_anything_starts(plane, prometheus):
    cl, digest = plane(prometheus(config={"scrape_configs": []}))
    Gate = rollout_pb2.AnalysisGate
    e = refused(cl, digest, Gate(metric="prometheus", query="sum(rate(x[$window]) / ", max_ratio=1))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(e) == "BAD_GATE"
    assert field_of(e) == "gates[0].query" and "does not parse" in e.details()
    e = refused(cl, digest, Gate(metric="prometheus", query="", max_ratio=1))
    assert reason_of(e) == "BAD_GATE" and field_of(e) == "gates[0].query"
    e = refused(cl, digest, Gate(metric="prometheus", query=STALE))  # nothing to judge by
    assert reason_of(e) == "BAD_GATE"
    e = refused(cl, digest, Gate(metric="error_rate", query=STALE, max_ratio=1))
    assert reason_of(e) == "BAD_GATE" and field_of(e) == "gates[0].query"
    # a query that parses is accepted (the rollout then runs; the shard is not there, which is fine here)
    cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, gates=[
        Gate(metric="prometheus", query=STALE, max_ratio=0.5)]))


def test_without_a_reachable_prometheus_such_gates_are_refused(plane):
    gate = rollout_pb2.AnalysisGate(metric="prometheus", query=STALE, max_ratio=0.5)
    cl, digest = plane(None)
    e = refused(cl, digest, gate)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(e) == "NO_PROMETHEUS"
    cl, digest = plane(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    e = refused(cl, digest, gate)
    assert reason_of(e) == "PROMETHEUS_UNREACHABLE" and field_of(e) == "gates[0].query"


def test_an_unreachable_prometheus_answers_no_number():
    q = PrometheusQueries(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    value, why = q.value("vector(1)", at=0)
    assert value is None and "did not answer" in why


def test_placeholders_name_each_side():
    got = fill(STALE, ["sha256:" + "ab" * 32, ""], ["s0", "s1.b"], 29.6)
    assert 'version=~"abababababab|base"' in got and 'shard=~"s0|s1\\\\.b"' in got and "[30s]" in got
    assert "$" not in got
