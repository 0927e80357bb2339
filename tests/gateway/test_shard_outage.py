"""A shard that stops answering in the middle of a rollout (its processes stopped with SIGSTOP, as a hung
host or a network partition looks from outside) and comes back: the gateway routes around it, the
rollout waits for it within its progress deadline or rolls back past it, and on return the shard
converges to what it should run. Real vLLM shards, a real control plane and gateway."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

from factpatch.v1 import rollout_pb2
from tests.reliability.results import merge_section
from tests.server.helpers import rid


@contextmanager
def stopped(shard):
    os.killpg(shard.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(shard.proc.pid, signal.SIGCONT)


def _wait(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _routable(stack) -> set[str]:
    return {v.name for v in stack.srv.gateway.router.shards() if v.available}


def _served_by(stack, prompts, n=12) -> set[str]:
    shards = set()
    for i in range(n):
        r = stack.complete(prompts[i % len(prompts)], key=f"outage-{i}")
        assert r.status_code == 200, r.text
        shards.add(r.headers["X-Factpatch-Shard"])
    return shards


def test_a_shard_that_disappears_and_returns(stack, shards, fix_patch, fact):
    s0, s1 = shards["s0"], shards["s1"]
    digest = stack.cl.push(fix_patch).digest
    figures = {}

    # 1. gone for a while, back within the progress deadline: the rollout waits and then succeeds
    with stopped(s1):
        _wait("s1 to be marked unreachable", lambda: "s1" not in _routable(stack))
        assert _served_by(stack, fact.prompts) == {"s0"}  # the gateway routes around it, no failed request
        r = stack.start(digest, steps=[rollout_pb2.RolloutStep(shards=["s0", "s1"])], progress_deadline_seconds=120)
        _wait("s0 to take the patch", lambda: s0.status().json()["active_version"] == digest)
        time.sleep(3)
        assert stack.cl(stack.cl.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id=r.id)).state == \
            rollout_pb2.ROLLOUT_STATE_PROGRESSING  # waiting for s1, not failed
        t_back = time.monotonic()
    done = stack.wait_state(r.id, {"SUCCEEDED", "FAILED"})
    assert done.state == rollout_pb2.ROLLOUT_STATE_SUCCEEDED, done
    assert s1.status().json()["active_version"] == digest
    figures["back_within_deadline"] = {"converged_s_after_return": round(time.monotonic() - t_back, 1),
                                       "rollout": "SUCCEEDED"}
    _wait("s1 to be routable again", lambda: "s1" in _routable(stack))

    # 2. gone past the progress deadline: the rollout rolls back; on return the shard joins at base
    stack.cl(stack.cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
    with stopped(s1):
        _wait("s1 to be marked unreachable", lambda: "s1" not in _routable(stack))
        r = stack.start(digest, steps=[rollout_pb2.RolloutStep(shards=["s0", "s1"])], progress_deadline_seconds=6)
        rb = stack.wait_state(r.id, {"ROLLING_BACK", "FAILED"})
        assert rb.reason == "PROGRESS_DEADLINE", rb
        _wait("s0 to be back on base", lambda: s0.status().json()["active_version"] is None)
        assert _served_by(stack, fact.prompts) == {"s0"}
        t_back = time.monotonic()
    done = stack.wait_state(r.id, {"FAILED"})
    assert s1.status().json()["active_version"] is None and s0.status().json()["active_version"] is None
    figures["gone_past_deadline"] = {"rollout": "FAILED (PROGRESS_DEADLINE)", "converged_s_after_return":
                                     round(time.monotonic() - t_back, 1)}
    _wait("s1 to be routable again", lambda: "s1" in _routable(stack))
    assert _served_by(stack, fact.prompts, n=24) == {"s0", "s1"}
    merge_section("faults", {"shard_disappears_and_returns": figures})
