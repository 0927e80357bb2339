"""Routing decisions on a real state database: shards mid-swap, due for a swap or unhealthy get no
traffic; the split follows the rollout; a key keeps its side."""

from __future__ import annotations

import json

from factpatch.server.gateway.routing import BASE, CANARY, Router, SwapTracker, unit
from factpatch.server.state.db import Database, Rollout, RolloutShard

PATCH = "sha256:" + "a" * 64


def observe(db: Database, name: str, version: str | None, health: str = "SERVING") -> None:
    db.observe(name, {"active_version": version, "swapping": False}, health)


def test_swaps_and_split(tmp_path):
    db = Database(tmp_path / "state.db")
    for n in ("s0", "s1", "s2"):
        db.add_shard(n, f"http://127.0.0.1:1/{n}")
        observe(db, n, None)
    swaps = SwapTracker()
    router = Router(db, swaps)
    router.refresh()
    assert sorted(v.name for v in router.choose(None, None)[1]) == ["s0", "s1", "s2"]

    # a swap is due on s0 (desired differs from served): no traffic until it has happened
    with db.tx() as c:
        db.set_desired(c, "s0", PATCH)
    router.refresh()
    assert sorted(v.name for v in router.choose(None, None)[1]) == ["s1", "s2"]
    # the reconciler swaps it: still none while the mark holds, even with a table that says done
    swaps.begin("s0")
    observe(db, "s0", PATCH)
    router.refresh()
    assert "s0" not in {v.name for v in router.choose(None, None)[1]}
    swaps.end("s0", db.generation + 1)  # the mark outlives tables older than the swap's own record
    router.refresh()
    assert "s0" not in {v.name for v in router.choose(None, None)[1]}
    observe(db, "s0", PATCH)
    router.refresh()
    assert "s0" in {v.name for v in router.choose(None, None)[1]}
    # unhealthy: none
    observe(db, "s2", None, "UNREACHABLE")
    router.refresh()
    assert "s2" not in {v.name for v in router.choose(None, None)[1]}
    observe(db, "s2", None)

    # a rollout at 25 %: canary = s0 (serving the patch), base = the rest
    r = Rollout(id="ro-test", patch=PATCH, state="PAUSED", steps=[{"shards": ["s0"], "traffic_percent": 25},
                {"shards": ["s0", "s1", "s2"], "traffic_percent": 100}], current_step=0, etag="e", reason="",
                message="", gates=[], progress_deadline_s=300, created_by="t", created=0, updated=0, step_started=0)
    with db.tx() as c:
        db.insert_rollout(c, r)
        for n in ("s0", "s1", "s2"):
            db.upsert_rollout_shard(c, r.id, RolloutShard(n, None, PATCH if n == "s0" else None))
    t = router.refresh()
    assert t.split.canary == ("s0",) and t.base == ("s1", "s2") and t.split.canary_share == 0.25
    for i in range(200):
        key = f"user-{i}"
        route, cands = router.choose(key, None)
        assert route == (CANARY if unit(key, r.id) < 0.25 else BASE)
        assert {c.name for c in cands} == ({"s0"} if route == CANARY else {"s1", "s2"})
        assert router.choose(key, None)[0] == route
    assert router.choose("x", BASE)[0] == BASE and router.choose("x", CANARY)[0] == CANARY
    # the only canary swapping: its keys are served by base rather than refused; a forced canary is refused
    swaps.begin("s0")
    key = next(f"u{i}" for i in range(1000) if unit(f"u{i}", r.id) < 0.25)
    assert router.choose(key, None)[0] == BASE
    assert router.choose(key, CANARY) == (CANARY, [])
    db.close()


def test_a_request_that_got_its_slot_holds_off_the_swap():
    """The gateway's slot and the reconciler's swap share one lock: a swap waits for the requests
    already sent to the shard, and no new request gets a slot once the swap has begun."""
    import threading

    swaps = SwapTracker()
    assert swaps.enter("s0")
    swaps.begin("s0")
    assert not swaps.enter("s0")  # kept off the shard from now on
    assert not swaps.drain("s0", timeout=0.05)  # the first request is still running
    done = threading.Event()
    threading.Thread(target=lambda: (swaps.drain("s0", timeout=5) and done.set())).start()
    swaps.leave("s0")
    assert done.wait(5)
    swaps.end("s0", generation=3)
    assert swaps.enter("s0")  # after the swap, the shard takes requests again
    swaps.leave("s0")


def _rollout(db: Database, rid: str, shards: list[str], canary: str, pct: int, created: float) -> Rollout:
    r = Rollout(id=rid, patch=PATCH, state="PAUSED", steps=[{"shards": [canary], "traffic_percent": pct},
                {"shards": shards, "traffic_percent": 100}], current_step=0, etag="e", reason="", message="",
                gates=[], progress_deadline_s=300, created_by="t", created=created, updated=created, step_started=created)
    with db.tx() as c:
        db.insert_rollout(c, r)
        for n in shards:
            db.upsert_rollout_shard(c, r.id, RolloutShard(n, None, PATCH if n == canary else None))
        db.set_desired(c, canary, PATCH)
    return r


def test_rollouts_on_disjoint_shards_each_get_their_own_split(tmp_path):
    db = Database(tmp_path / "state.db")
    for n in ("s0", "s1", "s2", "s3"):
        db.add_shard(n, f"http://127.0.0.1:1/{n}")
        observe(db, n, PATCH if n in ("s0", "s2") else None)
    router = Router(db, SwapTracker())
    a = _rollout(db, "ro-a", ["s0", "s1"], "s0", 25, created=1.0)
    router.refresh()
    keys = [f"user-{i}" for i in range(4000)]
    alone = {k: router.choose(k, None) for k in keys}
    b = _rollout(db, "ro-b", ["s2", "s3"], "s2", 10, created=2.0)
    t = router.refresh()
    assert [s.rollout_id for s in t.splits] == [a.id, b.id]  # oldest first
    assert t.split_of(b.id).canary == ("s2",) and t.base == ("s1", "s3")
    got = {k: router.choose(k, None) for k in keys}
    to = {name: sum(1 for _, cands in got.values() if [c.name for c in cands] == [name]) / len(keys)
          for name in ("s0", "s2")}
    assert abs(to["s0"] - 0.25) < 0.03 and abs(to["s2"] - 0.10) < 0.03, to  # each its share of all traffic
    assert all({c.name for c in cands} == {"s1", "s3"} for route, cands in got.values() if route == BASE)
    # the new rollout takes its share from base: nobody on ro-a's canary moved
    assert all(got[k][1][0].name == "s0" for k, (route, cands) in alone.items() if route == CANARY)
    assert all(router.choose(k, None)[0] == got[k][0] for k in keys[:200])  # sticky
    # forced canary: any running rollout's canary
    assert {c.name for c in router.choose("x", CANARY)[1]} == {"s0", "s2"}

    # shares over everything are scaled down together (80 % + 60 % -> 4/7 and 3/7), none is starved
    with db.tx() as c:
        for r, pct in ((a, 80), (b, 60)):
            r.steps[0]["traffic_percent"] = pct
            c.execute("UPDATE rollouts SET steps=? WHERE id=?", (json.dumps(r.steps), r.id))
    t = router.refresh()
    assert [round(s.canary_share, 4) for s in t.splits] == [round(0.8 / 1.4, 4), round(0.6 / 1.4, 4)]
    db.close()
