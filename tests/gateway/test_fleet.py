"""The control plane driving two real vLLM shards (fixture model): full flow, rollback on a refused
apply, base mismatch refused before any shard is touched, kill -9 in the middle of a rollout; Rollback
to each shard's previous release.

It uses the package's two shards (no gateway): starting two more engines would cost over a minute."""

from __future__ import annotations

import sqlite3
import time

import grpc
import pytest

from factpatch.core.checkpoint import Checkpoint
from factpatch.harness.control_plane_process import ControlPlaneProcess
from factpatch.server.api.errors import reason_of
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database
from factpatch.v1 import fleet_pb2, patch_pb2, rollout_pb2
from tests.server.helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, budget_in, random_patch, rid, write_tokens

pytestmark = pytest.mark.vllm

W = "model.layers.3.mlp.down_proj.weight"
PROMPT = "The refund period of Harbor Support is"
S = rollout_pb2.RolloutState


@pytest.fixture(scope="module")
def patches(fixture_dir):
    fp = Checkpoint(fixture_dir).fingerprint([W])
    return {
        "a": random_patch({W: (256, 1024)}, fp, rank=2, seed=1, scale=0.5),  # moves the answer's log-prob
        "b": random_patch({W: (256, 1024)}, fp, rank=2, seed=4, scale=0.5),
        "wide": random_patch({W: (256, 1024)}, fp, rank=8, seed=2, scale=0.05),
        "other_base": random_patch({W: (256, 1024)}, "sha256:" + "e" * 64, rank=2, seed=3),
    }


def answer(shard) -> tuple[str, float]:
    c = shard.complete(PROMPT, max_tokens=3)["choices"][0]
    return c["text"], round(sum(c["logprobs"]["token_logprobs"]), 4)


def active(shard) -> str | None:
    return shard.status().json()["active_version"]


def wait_state(cl: Client, rollout_id: str, states: set[int], timeout: float = 120) -> rollout_pb2.Rollout:
    last = None
    for r in cl.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=rollout_id), metadata=cl.md, timeout=timeout):
        last = r
        if r.state in states:
            return r
    raise AssertionError(f"rollout ended in {last}")


def test_full_flow_rollback_and_crash(tmp_path, shards, patches, fixture_dir):
    s0, s1 = shards["s0"], shards["s1"]  # the package's shards; s1 refuses ranks over 4
    assert s0.revert().status_code == 200 and s1.revert().status_code == 200
    base = answer(s0)
    assert answer(s1) == base
    drain = 7.5  # the control plane's drain budget, which each shard's swap must use
    cp = ControlPlaneProcess(tmp_path / "state", write_tokens(tmp_path / "tokens.yaml"), AGENT_TOKEN,
                   {"s0": s0.endpoints, "s1": s1.endpoints}, base_dirs=[fixture_dir], extra_args=["--drain-timeout", str(drain)])
    cp.start()
    try:
        cl = Client(cp.target, OPERATOR_TOKEN)
        a = cl.push(patches["a"]).digest
        other = cl.push(patches["other_base"]).digest
        # wait for the first status pass so the fleet's base fingerprints are known
        deadline = time.monotonic() + 30
        while not all(s.base_fingerprint for s in cl(cl.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards):
            assert time.monotonic() < deadline
            time.sleep(0.3)

        # a patch for another base: refused before any shard is touched
        with pytest.raises(grpc.RpcError) as ei:
            cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=other))
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(ei.value) == "BASE_MISMATCH"
        assert active(s0) is None and active(s1) is None

        # canary on s0
        r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=a, canary_shards=["s0"]))
        r = wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_PAUSED")})
        assert active(s0) == a and active(s1) is None
        assert budget_in(s0.status().json()["last_swap"]) == drain
        patched = answer(s0)
        assert patched != base and answer(s1) == base

        # promote: both shards serve the patch
        r = cl(cl.rollouts.Promote, rollout_pb2.PromoteRequest(request_id=rid(), id=r.id, etag=r.etag))
        wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_SUCCEEDED")})
        assert active(s0) == a and active(s1) == a
        assert answer(s0) == patched and answer(s1) == patched

        # one shard refuses (rank over its limit): the shard that took it goes back to the previous version
        wide = cl.push(patches["wide"]).digest
        r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
            request_id=rid(), patch=wide, steps=[rollout_pb2.RolloutStep(shards=["s0", "s1"])]))
        r = wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_FAILED")})
        assert r.reason == "RANK_TOO_LARGE"
        assert active(s0) == a and active(s1) == a and answer(s0) == patched

        # back to base: exact base answers everywhere
        resp = cl(cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
        assert all(x.ok for x in resp.results)
        assert active(s0) is None and active(s1) is None
        assert all(budget_in(s.status().json()["last_swap"]) == drain for s in (s0, s1))
        assert answer(s0) == base and answer(s1) == base

        # kill -9 in the middle of a rollout, restart, converge
        r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=a, canary_shards=["s1"]))
        cl.close()
        cp.kill9()
        db = sqlite3.connect(cp.state_dir / "state.db")
        audit_before = db.execute("SELECT id, method, request_id, result FROM audit WHERE result != 'PENDING'").fetchall()
        db.close()
        cp.start()
        cl = Client(cp.target, OPERATOR_TOKEN)
        r = wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_PAUSED")})
        assert active(s1) == a and active(s0) is None
        r = cl(cl.rollouts.Promote, rollout_pb2.PromoteRequest(request_id=rid(), id=r.id, etag=r.etag))
        wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_SUCCEEDED")})
        assert active(s0) == a and active(s1) == a and answer(s0) == patched
        # nothing lost: every finished audit row is still there, and the store still verifies
        db = sqlite3.connect(cp.state_dir / "state.db")
        audit_after = set(db.execute("SELECT id, method, request_id, result FROM audit").fetchall())
        db.close()
        assert set(audit_before) <= audit_after
        # and the log's hash chain survived the kill: the cut-short record was settled, not rewritten
        state = Database(cp.state_dir / "state.db")
        verdict = AuditLog(state).verify()
        state.close()
        assert verdict.intact, verdict.problem
        blob = b"".join(c.data for c in cl.patches.GetPatchBlob(patch_pb2.GetPatchBlobRequest(digest=a), metadata=cl.md))
        assert blob == patches["a"]

        # a shard that lost its weights (reverted behind our back, as after a restart) gets them back
        assert s0.revert().status_code == 200
        deadline = time.monotonic() + 30
        while active(s0) != a:
            assert time.monotonic() < deadline, "reconciler did not re-apply the desired version"
            time.sleep(0.3)
        assert answer(s0) == patched
        cl(cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
        cl.close()
    finally:
        cp.stop()


def roll_out(cl: Client, digest: str) -> None:
    r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
        request_id=rid(), patch=digest, steps=[rollout_pb2.RolloutStep(shards=["s0", "s1"])]))
    wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_SUCCEEDED")})


def test_rollback_returns_each_shard_to_its_previous_release(tmp_path, shards, patches, fixture_dir):
    s0, s1 = shards["s0"], shards["s1"]
    assert s0.revert().status_code == 200 and s1.revert().status_code == 200
    base = answer(s0)
    cp = ControlPlaneProcess(tmp_path / "state", write_tokens(tmp_path / "tokens.yaml"), AGENT_TOKEN,
                             {"s0": s0.endpoints, "s1": s1.endpoints}, base_dirs=[fixture_dir])
    cp.start()
    try:
        cl = Client(cp.target, OPERATOR_TOKEN)
        a, b = cl.push(patches["a"]).digest, cl.push(patches["b"]).digest
        roll_out(cl, a)
        on_a = answer(s0)
        roll_out(cl, b)
        on_b = answer(s0)
        assert len({base, on_a, on_b}) == 3

        def rollback(**kw) -> rollout_pb2.RollbackResponse:
            return cl(cl.rollouts.Rollback, rollout_pb2.RollbackRequest(request_id=rid(), **kw))

        # one call: both shards back on a, answering exactly as a did
        resp = rollback()
        assert [(x.shard, x.ok, x.previous_version, x.version) for x in resp.results] == [
            ("s0", True, b, a), ("s1", True, b, a)]
        assert active(s0) == a and active(s1) == a and answer(s0) == on_a and answer(s1) == on_a
        history = cl(cl.rollouts.ListReleases, rollout_pb2.ListReleasesRequest(shard="s0")).releases
        assert [(h.version, h.source.split()[0]) for h in history] == [
            (a, "rollback"), (b, "rollout"), (a, "rollout"), ("", "before")]

        # a version the shard never had is refused, and nothing moves
        with pytest.raises(grpc.RpcError) as ei:
            rollback(to_version=cl.push(patches["wide"]).digest)
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(ei.value) == "NOT_IN_HISTORY"
        assert active(s0) == a and active(s1) == a

        # a canary still running is undone: its shard goes back to what the rollout found there
        r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=b, canary_shards=["s0"]))
        wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_PAUSED")})
        assert answer(s0) == on_b
        resp = rollback(shards=["s0"])
        assert list(resp.aborted_rollouts) == [r.id] and (resp.results[0].version, resp.results[0].ok) == (a, True)
        done = wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_ABORTED")})
        assert done.reason == "ROLLED_BACK" and active(s0) == a and answer(s0) == on_a

        # after a revert to base, rollback puts the last release back; further back is refused nowhere
        cl(cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
        assert answer(s0) == base
        assert all(x.version == a and x.ok for x in rollback().results)
        assert answer(s0) == on_a and answer(s1) == on_a
        resp = rollback(to_version=b)
        assert all(x.ok for x in resp.results) and answer(s0) == on_b and answer(s1) == on_b
        cl(cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
        assert answer(s0) == base and answer(s1) == base
        cl.close()
    finally:
        cp.stop()


def test_crash_between_a_shard_switch_and_its_audit_row(tmp_path, shards, patches, fixture_dir):
    """SIGKILL right after the shard took the patch, before the control plane recorded it: on restart
    the shard's state is read back, the rollout converges without a second write, and the audit row of
    the cut-short switch is settled INTERRUPTED (the hash chain still verifies)."""
    from factpatch.core import failpoints

    s0 = shards["s0"]
    assert s0.revert().status_code == 200
    cp = ControlPlaneProcess(tmp_path / "state", write_tokens(tmp_path / "tokens.yaml"), AGENT_TOKEN, {"s0": s0.endpoints},
                             base_dirs=[fixture_dir])
    cp.env = {failpoints.ENV: "reconciler.after_agent_call"}
    cp.start()
    cl = Client(cp.target, OPERATOR_TOKEN)
    a = cl.push(patches["a"]).digest
    try:
        cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=a))
    except grpc.RpcError:
        pass  # the process may die before it answers; the rollout was committed before the shard was asked
    cl.close()
    assert cp.proc.wait(timeout=120) == -9
    cp._log.close()
    assert active(s0) == a  # the shard switched; the control plane died before recording it

    cp.env = {}
    cp.start()
    try:
        cl = Client(cp.target, OPERATOR_TOKEN)
        r = cl(cl.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest()).rollouts[0]
        r = wait_state(cl, r.id, {S.Value("ROLLOUT_STATE_SUCCEEDED")})
        assert active(s0) == a and s0.status().json()["active_version"] == a
        cl(cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
        cl.close()
    finally:
        cp.stop()
    state = Database(cp.state_dir / "state.db")
    try:
        applies = [r["result"] for r in state.q("SELECT result FROM audit WHERE method = 'agent/apply'")]
        pending = state.q("SELECT id FROM audit WHERE result = 'PENDING'")
        verdict = AuditLog(state).verify()
    finally:
        state.close()
    assert applies == ["INTERRUPTED"] and not pending, applies  # one switch, on record, never repeated
    assert verdict.intact, verdict.problem
