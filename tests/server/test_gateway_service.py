"""GatewayService on a real control plane: the routing watch, traffic reports feeding canary analysis,
the gateway role, and the swap handshake (a swap waits until every watching gateway acknowledged it)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from factpatch.server.api.errors import reason_of
from factpatch.v1 import fleet_pb2, gateway_pb2, patch_pb2

from .helpers import GATEWAY_TOKEN, VIEWER_TOKEN, Client, rid


@pytest.fixture
def gw(control_plane):
    c = Client(f"127.0.0.1:{control_plane.port}", GATEWAY_TOKEN)
    yield c
    c.close()


def watch(client: Client, gateway_id: str = "gw-a"):
    return client.gateways.WatchRouting(gateway_pb2.WatchRoutingRequest(gateway_id=gateway_id), metadata=client.md,
                                        timeout=30)


def test_snapshot_lists_shards_and_follows_changes(control_plane, gw, op):
    stream = watch(gw)
    first = next(stream)
    assert first.control_plane_id and list(first.shards) == []
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="a", address="http://127.0.0.1:9"))
    snap = next(stream)
    while not snap.shards:  # the registration's first writes may come in more than one snapshot
        snap = next(stream)
    assert [s.name for s in snap.shards] == ["a"] and snap.shards[0].url == "http://127.0.0.1:9"
    assert snap.generation > first.generation and not snap.shards[0].blocked
    stream.cancel()


def test_gateway_role_calls_the_gateway_service_only(control_plane, gw, op):
    with pytest.raises(grpc.RpcError) as e:
        gw(gw.patches.ListPatches, patch_pb2.ListPatchesRequest())
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    viewer = Client(f"127.0.0.1:{control_plane.port}", VIEWER_TOKEN)
    with pytest.raises(grpc.RpcError) as e:
        next(watch(viewer))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    viewer.close()
    # an operator may (to debug routing), a gateway may
    assert next(watch(op)).control_plane_id == next(watch(gw)).control_plane_id


def test_bad_gateway_id_is_refused_by_name(gw):
    for bad in ("", "x" * 129, "tab\tin"):
        with pytest.raises(grpc.RpcError) as e:
            gw(gw.gateways.ReportTraffic, gateway_pb2.ReportTrafficRequest(gateway_id=bad))
        assert (e.value.code(), reason_of(e.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_GATEWAY_ID")
        assert "gateway_id" in e.value.details()


def test_reported_traffic_reaches_the_analysis_window(control_plane, gw):
    now = time.time()
    sample = gateway_pb2.TrafficSample(at=now, version="sha256:" + "ab" * 32, shard="a", latency_s=0.05,
                                       matched_monitors=["stale:x"], mentioned_subjects=["harbor support"], ttft_s=0.01)
    got = gw(gw.gateways.ReportTraffic, gateway_pb2.ReportTrafficRequest(gateway_id="gw-a", samples=[sample]))
    assert got.accepted == 1
    seen = control_plane.observations.since(now - 1)
    assert len(seen) == 1
    o = seen[0]
    assert (o.version, o.shard, o.error, o.matched, o.mentioned, o.ttft) == (
        sample.version, "a", False, frozenset({"stale:x"}), frozenset({"harbor support"}), pytest.approx(0.01))


def test_swap_waits_for_every_watching_gateway(control_plane, gw, op):
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="a", address="http://127.0.0.1:9"))
    swaps = control_plane.cp.reconciler.swaps
    # nobody watching: nothing to wait for
    swaps.begin("a")
    assert swaps.drain("a", 0.5)
    swaps.end("a", control_plane.cp.db.generation)

    stream = watch(gw, "gw-b")
    snaps: list = []

    def follow():
        try:
            for s in stream:
                snaps.append(s)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.CANCELLED  # the test closes its watch

    threading.Thread(target=follow, daemon=True).start()
    deadline = time.monotonic() + 10
    while not snaps:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    while "gw-b" not in control_plane.remote_gateways.connected():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    swaps.begin("a")
    mark = swaps.mark_of("a")
    while not any(s.shards and s.shards[0].swap_mark == mark and s.shards[0].blocked for s in snaps):
        assert time.monotonic() < deadline, "the swap mark never reached the watch"
        time.sleep(0.02)
    # the watching gateway has not acknowledged: the drain times out
    assert not swaps.drain("a", 0.3)
    # a report that does not acknowledge the mark (a request still in flight there): still waiting
    gw(gw.gateways.ReportTraffic, gateway_pb2.ReportTrafficRequest(gateway_id="gw-b", swap_marks={"a": mark - 1}))
    assert not swaps.drain("a", 0.3)
    acked = threading.Timer(0.3, lambda: gw(gw.gateways.ReportTraffic, gateway_pb2.ReportTrafficRequest(
        gateway_id="gw-b", swap_marks={"a": mark})))
    acked.start()
    t0 = time.monotonic()
    assert swaps.drain("a", 10)
    assert 0.25 < time.monotonic() - t0 < 5
    swaps.end("a", control_plane.cp.db.generation)
    # the shard is free again in the next snapshot
    while not (snaps[-1].shards and not snaps[-1].shards[0].blocked):
        assert time.monotonic() < deadline + 10
        time.sleep(0.02)
    # a gateway whose watch looks open but that stopped reporting is not waited for past stale_after_s
    control_plane.remote_gateways.stale_after_s = 0.5
    time.sleep(0.6)
    swaps.begin("a")
    t0 = time.monotonic()
    assert swaps.drain("a", 10) and time.monotonic() - t0 < 2
    swaps.end("a", control_plane.cp.db.generation)
    control_plane.remote_gateways.stale_after_s = 5.0
    # a gateway that closed its watch is not waited for
    gw(gw.gateways.ReportTraffic, gateway_pb2.ReportTrafficRequest(gateway_id="gw-b"))
    assert "gw-b" in control_plane.remote_gateways.connected()
    stream.cancel()
    while control_plane.remote_gateways.connected():
        assert time.monotonic() < deadline + 10
        time.sleep(0.02)
    swaps.begin("a")
    assert swaps.drain("a", 0.5)
    swaps.end("a", control_plane.cp.db.generation)


@pytest.mark.parametrize("sample, field", [
    (dict(at=float("nan"), shard="a"), "samples[0].at"),
    (dict(at=1.0, shard="a", latency_s=-1.0), "samples[0].latency_s"),
    (dict(at=1.0, shard="a", latency_s=float("inf")), "samples[0].latency_s"),
    (dict(at=1.0, shard="a", ttft_s=float("nan")), "samples[0].ttft_s"),
    (dict(at=1.0, shard="a", version="sha256:../x"), "samples[0].version"),
    (dict(at=1.0, shard=""), "samples[0].shard"),
    (dict(at=1.0, shard="a", matched_monitors=["x" * 300]), "samples[0].matched_monitors[0]"),
])
def test_a_bad_sample_keeps_the_whole_report_out(control_plane, gw, sample, field):
    good = gateway_pb2.TrafficSample(at=time.time(), shard="a", latency_s=0.1)
    with pytest.raises(grpc.RpcError) as e:
        gw(gw.gateways.ReportTraffic, gateway_pb2.ReportTrafficRequest(
            gateway_id="gw-a", samples=[gateway_pb2.TrafficSample(**sample), good]))
    assert (e.value.code(), reason_of(e.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_TRAFFIC_REPORT")
    assert field in e.value.details()
    assert control_plane.observations.since(0) == []  # nothing of it, the good sample included


def test_a_gateway_sends_the_token_its_file_holds_now(control_plane, tmp_path, caplog):
    """Rotation without a restart: the link reads its token file again at every reconnect, so a token
    the control plane refuses locks it out only until the file holds an accepted one again."""
    import secrets

    from factpatch.core.tokens import TokenFile
    from factpatch.server.gateway.control_link import ControlLink, FollowedMonitors
    from factpatch.server.gateway.routing import Router, SwapTracker
    from factpatch.server.metrics import Metrics

    def until(cond, what: str, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, what
            time.sleep(0.05)

    f = tmp_path / "gateway.token"
    f.write_text(GATEWAY_TOKEN + "\n")
    channel = grpc.insecure_channel(f"127.0.0.1:{control_plane.port}")
    link = ControlLink(channel, TokenFile(f, "--token-file"), "gw-rotating", Router(None, SwapTracker()),
                       FollowedMonitors(Metrics()))
    link.start()
    try:
        until(link.connected.is_set, "the link never connected with the accepted token")
        f.write_text(secrets.token_urlsafe(32) + "\n")  # a token the control plane does not know
        link._call.cancel()  # the watch drops, as on a control plane restart
        until(lambda: "refused this gateway's token" in caplog.text, "the new token was not sent on reconnect")
        assert not link.connected.is_set()
        f.write_text(GATEWAY_TOKEN + "\n")
        until(link.connected.is_set, "the link did not come back once the file held an accepted token again")
    finally:
        link.stop()
        channel.close()


def test_a_token_file_that_turns_weak_keeps_the_last_good_token(tmp_path, caplog):
    from factpatch.core.tokens import TokenFile, WeakTokenError

    f = tmp_path / "t"
    f.write_text(GATEWAY_TOKEN)
    token = TokenFile(f, "--token-file")
    f.write_text("   \n")
    assert token() == GATEWAY_TOKEN and "holds no token" in caplog.text
    f.unlink()
    assert token() == GATEWAY_TOKEN and "cannot be read" in caplog.text
    f.write_text("change-me\n")
    with pytest.raises(WeakTokenError, match="line 1: refused"):
        TokenFile(f, "--token-file")


def test_one_snapshot_per_state_however_many_gateways_watch(control_plane, gw, op):
    service, swaps = control_plane.gateway_service, control_plane.cp.reconciler.swaps
    streams = [watch(gw, f"gw-{i}") for i in range(4)]
    firsts = [next(s) for s in streams]
    assert len({f.generation for f in firsts}) == 1
    built = service.builds
    op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="a", address="http://127.0.0.1:9"))
    for s in streams:
        snap = next(s)
        while not snap.shards:
            snap = next(s)
        assert [x.name for x in snap.shards] == ["a"]
    # every watch saw the change, from far fewer builds than one per watch and state
    states = service.db.generation - firsts[0].generation
    assert 1 <= service.builds - built <= states + 1
    # the same state: the same snapshot; a swap beginning is a new state, whatever the database says
    same = service.shared_snapshot()
    assert service.shared_snapshot() is same
    gen = service.db.generation
    swaps.on_change, on_change = None, swaps.on_change  # not nudged: only the tracker knows
    try:
        swaps.begin("a")
        assert service.db.generation == gen
        blocked = service.shared_snapshot()
        assert blocked is not same and blocked.shards[0].blocked and blocked.shards[0].swap_mark > 0
        swaps.end("a", gen + 1)
    finally:
        swaps.on_change = on_change
    for s in streams:
        s.cancel()
