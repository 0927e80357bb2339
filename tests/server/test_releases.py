"""Release history and where Rollback sends each shard (the decision; tests/gateway/test_fleet.py runs it
on real shards)."""

from __future__ import annotations

import time

import pytest

from factpatch.server.control import releases
from factpatch.server.control.releases import RollbackRefused, rollback_plan
from factpatch.server.state.db import Database, Rollout, RolloutShard
from factpatch.server.state.rollout_state import RolloutState

A, B, C = ("sha256:" + ch * 64 for ch in "abc")


@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "state.db")
    for digest in (A, B, C):
        d.add_patch(digest, 1, {}, [], "test")
    for name in ("s0", "s1"):
        d.add_shard(name, "http://127.0.0.1:9")
    yield d
    d.close()


def release(db, shard, version, source, before=None):
    with db.tx() as c:
        db.set_desired(c, shard, version)
        releases.record(db, c, shard, version, source, "alice", before=before)


def test_first_release_records_what_the_shard_ran_before(db):
    release(db, "s0", A, "rollout ro-1", before=None)
    release(db, "s0", B, "rollout ro-2", before=A)  # history exists: no second "before" entry
    assert [(r.version, r.source) for r in db.releases("s0")] == [
        (B, "rollout ro-2"), (A, "rollout ro-1"), (None, "before rollout ro-1")]
    assert [r.principal for r in db.releases("s0")][-1] == releases.SYSTEM


def test_back_means_the_newest_other_release_and_twice_toggles(db):
    release(db, "s0", A, "rollout ro-1")
    release(db, "s0", B, "rollout ro-2")
    plan = rollback_plan(db, ["s0"])
    assert (plan["s0"].to, plan["s0"].left) == (A, B)
    release(db, "s0", A, "rollback")
    assert rollback_plan(db, ["s0"])["s0"].to == B  # like `kubectl rollout undo`: back again is forward


def test_a_rollout_that_never_finished_is_not_a_release(db):
    release(db, "s0", A, "rollout ro-1")
    with db.tx() as c:  # a canary of B on s0 that failed and went back: desired is A again
        db.set_desired(c, "s0", A)
    assert rollback_plan(db, ["s0"])["s0"].to is None  # back from A is base, never the tried B


def test_an_unfinished_rollout_is_undone(db):
    release(db, "s0", A, "rollout ro-1")
    now = time.time()
    r = Rollout("ro-2", B, RolloutState.PAUSED, [{"shards": ["s0"], "traffic_percent": 0}], 0, "e", "", "", [], 300,
                "alice", now, now, now, [RolloutShard("s0", A, B)])
    with db.tx() as c:
        db.insert_rollout(c, r)
        db.upsert_rollout_shard(c, r.id, r.shards[0])
        db.set_desired(c, "s0", B)
    move = rollback_plan(db, ["s0"])["s0"]
    assert (move.to, move.left, move.rollout) == (A, B, "ro-2")


@pytest.mark.parametrize("setup, to, reason", [
    ("none", "", "NO_PREVIOUS_VERSION"),  # nothing released yet
    ("one", C, "NOT_IN_HISTORY"),  # C was never released on s0
    ("deleted", "", "PATCH_NOT_FOUND"),  # the version to go back to left the store
])
def test_refusals_name_the_shard_and_the_reason(db, setup, to, reason):
    if setup in ("one", "deleted"):
        release(db, "s0", A, "rollout ro-1")
        release(db, "s0", B, "rollout ro-2")
    if setup == "deleted":
        db.delete_patch(A)
    before = [(s.name, s.desired_version) for s in db.shards()]
    with pytest.raises(RollbackRefused) as ei:
        rollback_plan(db, ["s0"], to)
    assert ei.value.reason == reason and ei.value.shard == "s0" and "s0" in ei.value.message
    assert [(s.name, s.desired_version) for s in db.shards()] == before


def test_removing_a_shard_forgets_its_history(db):
    release(db, "s1", A, "rollout ro-1")
    db.remove_shard("s1")
    db.add_shard("s1", "http://127.0.0.1:9")
    assert db.releases("s1") == []
