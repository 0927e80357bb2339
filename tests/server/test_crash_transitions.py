"""A crash right after a rollout transition is committed: `factpatch serve` dies by SIGKILL at the
`rollout.after_transition` failpoint, restarts on the same state, and

- the transition and its audit record are both there (they commit in one transaction), nothing is left
  PENDING and the hash chain verifies;
- the rollout carries on from the committed state: it is not started again, the transition is not
  written twice, and the shard's desired version is the one the transition set.

The transition is a real one: a step whose shard never answers runs past its progress deadline and
the reconciler rolls the rollout back.
"""

from __future__ import annotations

import time

from factpatch.core import failpoints
from factpatch.harness.control_plane_process import ControlPlaneProcess
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database
from factpatch.v1 import fleet_pb2, rollout_pb2
from tests.reliability.results import merge_section

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, random_patch, rid, write_tokens

W = "model.layers.0.mlp.down_proj.weight"
DEAD = "http://127.0.0.1:9"  # nothing listens: every agent call is refused at once
S = rollout_pb2.RolloutState


def _rollouts(cl) -> list:
    return list(cl(cl.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest()).rollouts)


def test_a_crash_after_a_rollout_transition_keeps_the_transition_and_its_record(tmp_path):
    assert "rollout.after_transition" in failpoints.NAMES
    write_tokens(tmp_path / "tokens.yaml")
    state = tmp_path / "state"
    cp = ControlPlaneProcess(state, tmp_path / "tokens.yaml", AGENT_TOKEN, shards={"s0": DEAD}, gateway=False)
    cp.env = {failpoints.ENV: "rollout.after_transition"}
    cl = Client(cp.start().target, OPERATOR_TOKEN)
    digest = cl.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64)).digest
    started = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
        request_id=rid(), patch=digest, steps=[rollout_pb2.RolloutStep(shards=["s0"])], progress_deadline_seconds=1))
    assert cp.proc.wait(timeout=60) == -9  # the deadline passed, the rollback was committed, then the kill
    cl.close()
    cp._log.close()

    cp.env = {}
    cl = Client(cp.start().target, OPERATOR_TOKEN)
    try:
        (r,) = _rollouts(cl)
        assert r.id == started.id and r.state == S.Value("ROLLOUT_STATE_ROLLING_BACK"), r
        assert r.reason == "PROGRESS_DEADLINE"
        (shard,) = cl(cl.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards
        assert shard.desired_version == ""  # back to base, as the committed transition said
        time.sleep(2)  # reconcile passes on the restarted process: still one rollout, still rolling back
        (again,) = _rollouts(cl)
        assert again.id == r.id and again.state == r.state and again.etag == r.etag
    finally:
        cl.close()
        cp.stop()

    db = Database(state / "state.db")
    try:
        rows = db.q("SELECT method, result FROM audit WHERE method LIKE 'rollout/%' ORDER BY id")
        pending = db.q("SELECT id FROM audit WHERE result='PENDING'")
        verdict = AuditLog(db).verify()
    finally:
        db.close()
    assert [(m["method"], m["result"]) for m in rows] == [("rollout/rolling_back", "PROGRESS_DEADLINE")], rows
    assert not pending
    assert verdict.intact, verdict.problem
    merge_section("faults", {"crash_after_a_rollout_transition": "transition and audit record committed together; "
                             "after restart the rollout went on from it, not started again, nothing PENDING"})

