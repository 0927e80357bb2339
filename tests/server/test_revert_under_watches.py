"""The emergency revert gets through while viewers hold watch streams open: streams get a capped
share of the workers (at most 8 per principal, 24 in all with 32 workers), the rest stay free."""

from __future__ import annotations

import grpc

from factpatch.server.api.stream_slots import NoStreamSlot, StreamSlots
from factpatch.v1 import fleet_pb2, rollout_pb2
from tests.factories import random_patch

from .helpers import VIEWER_TOKEN, Client, rid

W = "model.layers.0.mlp.down_proj.weight"
DEAD = "http://127.0.0.1:9"  # nothing listens: the rollout stays unfinished, so watches stay open


def test_revert_answers_while_a_hundred_viewer_watches_are_open(control_plane, op):
    digest = op.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64)).digest
    for name in ("s1", "s2"):
        op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=name, address=DEAD))
    r = op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, canary_shards=["s1"]))

    viewers = [Client(f"127.0.0.1:{control_plane.port}", VIEWER_TOKEN) for _ in range(4)]
    watches = [v.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=r.id), metadata=v.md, timeout=60)
               for v in viewers for _ in range(25)]
    try:
        opened, refused = 0, 0
        for w in watches:  # the first message says the stream was let in; a refusal comes at once
            try:
                next(w)
                opened += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams open" in e.details()
                refused += 1
        assert opened == 8 and refused == 92  # one viewer token: its cap of 8, however many connections

        # a second principal may watch too, and the operator still has workers for the revert
        own = op.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=r.id), metadata=op.md, timeout=60)
        next(own)
        resp = op(op.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()), timeout=20)
        assert list(resp.aborted_rollouts) == [r.id] and len(resp.results) == 2
        own.cancel()
    finally:
        for w in watches:
            w.cancel()
        for v in viewers:
            v.close()


def test_slots_are_given_back_when_a_stream_ends():
    slots = StreamSlots(workers=10, reserved=8, per_principal=8)  # 2 streams in all
    with slots.hold("a"), slots.hold("b"):
        try:
            with slots.hold("c"):
                raise AssertionError("a third stream was let in")
        except NoStreamSlot as e:
            assert "2 streams are open" in str(e)
    with slots.hold("c"), slots.hold("c"):
        pass
