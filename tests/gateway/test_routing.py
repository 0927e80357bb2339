"""Routing decisions on a real state database: shards mid-swap, due for a swap or unhealthy get no
traffic; the split follows the rollout; a key keeps its side."""

from __future__ import annotations

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
    assert t.split.canary == ("s0",) and t.split.base == ("s1", "s2") and t.split.canary_share == 0.25
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
