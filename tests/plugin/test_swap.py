"""The swap protocol against a fake engine: order of steps, all-or-none, drain policy, serialisation."""

from __future__ import annotations

import asyncio

import pytest

from factpatch.plugin.swap import SwapCoordinator, SwapError
from tests.server.helpers import budget_in


class FakeEngine:
    def __init__(self, ranks=2, *, fail_stage_rank=None, fail_commit_rank=None, drain_s=0.0):
        self.calls: list[str] = []
        self.ranks = ranks
        self.version = [None] * ranks
        self.fail_stage_rank, self.fail_commit_rank, self.drain_s = fail_stage_rank, fail_commit_rank, drain_s
        self.previous = [None] * ranks
        self.paused = False

    async def pause_generation(self, *, mode="abort", clear_cache=True):
        self.calls.append(f"pause:{mode}")
        if mode == "wait":
            if self.drain_s is None:  # requests that never finish on their own: only a timeout ends this
                await asyncio.Event().wait()
            await asyncio.sleep(self.drain_s)
        self.paused = True

    async def resume_generation(self):
        self.calls.append("resume")
        self.paused = False

    async def reset_prefix_cache(self, *a, **k):
        self.calls.append("reset_prefix_cache")
        return True

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(method)
        await asyncio.sleep(0.001)
        out = []
        for r in range(self.ranks):
            if method == "factpatch_stage":
                ok = r != self.fail_stage_rank
                out.append({"ok": ok} if ok else {"ok": False, "reason": "UNKNOWN_TENSOR", "message": "x"})
            elif method == "factpatch_commit":
                assert self.paused, "writes happen only while paused"
                if r == self.fail_commit_rank:
                    out.append({"ok": False, "reason": "WRITE_FAILED", "message": "boom"})
                else:
                    self.previous[r], self.version[r] = self.version[r], args[0]
                    out.append({"ok": True, "rank": r, "active_version": args[0], "applied_at": 1.0})
            elif method == "factpatch_rollback":
                if r != self.fail_commit_rank:
                    self.version[r] = self.previous[r]
                out.append({"ok": True})
            elif method == "factpatch_state":
                out.append({"rank": r, "active_version": self.version[r], "applied_at": None})
            else:
                out.append({"ok": True})
        return out


def run(coro):
    return asyncio.run(coro)


def test_order_is_stage_pause_write_reset_resume():
    eng = FakeEngine()
    st = run(SwapCoordinator(eng).swap(b"x", "sha256:a"))
    assert eng.calls == ["factpatch_stage", "pause:wait", "factpatch_commit", "reset_prefix_cache", "resume"]
    assert st.active_version == "sha256:a" and not st.swapping


def test_same_version_again_is_a_no_op():
    eng = FakeEngine()
    co = SwapCoordinator(eng)

    async def go():
        await co.swap(b"x", "sha256:a")
        n = len(eng.calls)
        await co.swap(b"x", "sha256:a")
        return n

    n = run(go())
    assert len(eng.calls) == n


def test_a_rank_refusing_to_stage_pauses_nothing_and_writes_nothing():
    eng = FakeEngine(fail_stage_rank=1)
    with pytest.raises(SwapError) as e:
        run(SwapCoordinator(eng).swap(b"x", "sha256:a"))
    assert e.value.reason == "UNKNOWN_TENSOR" and e.value.status == 422
    assert eng.calls == ["factpatch_stage", "factpatch_discard"]
    assert eng.version == [None, None]


def test_a_rank_failing_to_write_rolls_every_rank_back():
    eng = FakeEngine(fail_commit_rank=1)
    with pytest.raises(SwapError) as e:
        run(SwapCoordinator(eng).swap(b"x", "sha256:a"))
    assert e.value.reason == "WRITE_FAILED"
    assert eng.version == [None, None]
    assert eng.calls[-1] == "resume" and "factpatch_rollback" in eng.calls


def test_drain_timeout_abort_policy_aborts_then_swaps():
    eng = FakeEngine(drain_s=None)
    st = run(SwapCoordinator(eng, drain_timeout_s=0.05, drain_policy="abort").swap(b"x", "sha256:a"))
    assert "pause:abort" in eng.calls and st.active_version == "sha256:a"
    assert eng.calls.index("pause:abort") < eng.calls.index("factpatch_commit")
    assert st.last_swap["drain_timed_out"] is True and budget_in(st.last_swap) == 0.05


def test_one_swap_can_have_its_own_drain_budget():
    eng = FakeEngine(drain_s=None)
    co = SwapCoordinator(eng, drain_timeout_s=30, drain_policy="abort")
    st = run(co.swap(b"x", "sha256:a", drain_timeout_s=0.0))
    assert "pause:abort" in eng.calls and st.last_swap["drain_timed_out"] is True
    assert budget_in(st.last_swap) == 0.0
    eng.calls.clear()
    eng.drain_s = 0.0  # requests that finish at once: the coordinator's own budget is never reached
    st = run(co.swap(None, None))
    assert "pause:abort" not in eng.calls and st.last_swap["drain_timed_out"] is False
    assert st.last_swap["aborted_requests"] == 0 and st.active_version is None


class _OutputProcessor:
    def __init__(self, ids):
        self.request_states = {i: object() for i in ids}


class DrainingEngine(FakeEngine):
    """vLLM's wait-mode drain: it ends once every request sent before the pause has finished."""

    def __init__(self, running):
        super().__init__()
        self.output_processor = _OutputProcessor(running)
        self.aborted: list[str] = []

    async def pause_generation(self, *, mode="abort", clear_cache=True):
        self.calls.append(f"pause:{mode}")
        if mode == "wait":
            before = set(self.output_processor.request_states)
            while before & set(self.output_processor.request_states):
                await asyncio.sleep(0.005)
        self.paused = True

    async def abort(self, request_id, internal=False):
        assert internal, "the swap aborts by vLLM's internal ids"
        for i in request_id:
            self.output_processor.request_states.pop(i)
            self.aborted.append(i)


def test_the_abort_policy_cuts_off_only_requests_sent_before_the_pause():
    eng = DrainingEngine(["a", "b"])

    async def go():
        swap = asyncio.ensure_future(SwapCoordinator(eng, drain_timeout_s=0.1).swap(b"x", "sha256:a"))
        await asyncio.sleep(0.03)  # the drain is under way: a new request arrives and queues
        eng.output_processor.request_states["late"] = object()
        return await swap

    st = run(go())
    assert sorted(eng.aborted) == ["a", "b"] and "late" in eng.output_processor.request_states
    assert "pause:abort" not in eng.calls and st.active_version == "sha256:a"
    assert st.last_swap["drain_timed_out"] is True and st.last_swap["aborted_requests"] == 2


class SlowPauseEngine(DrainingEngine):
    """vLLM's pause goes through the engine core, so even an idle engine takes a moment to pause."""

    async def pause_generation(self, *, mode="abort", clear_cache=True):
        await asyncio.sleep(0.02)
        await super().pause_generation(mode=mode, clear_cache=clear_cache)


def test_a_budget_that_runs_out_with_nothing_running_is_not_a_timeout():
    eng = SlowPauseEngine([])  # idle: nothing was sent before the pause, and the budget is zero
    st = run(SwapCoordinator(eng, drain_timeout_s=0.0).swap(b"x", "sha256:a"))
    assert eng.aborted == [] and "pause:abort" not in eng.calls and st.active_version == "sha256:a"
    assert st.last_swap["drain_timed_out"] is False and st.last_swap["aborted_requests"] == 0


def test_a_zero_budget_cuts_off_what_was_running_instead_of_draining_it():
    # the wait for the drain must not time out before the snapshot of what is running is taken, or a
    # zero budget finds nothing to cut off and waits for everything
    eng = SlowPauseEngine(["a", "b", "c"])
    st = run(SwapCoordinator(eng, drain_timeout_s=30).swap(b"x", "sha256:a", drain_timeout_s=0.0))
    assert sorted(eng.aborted) == ["a", "b", "c"] and st.active_version == "sha256:a"
    assert st.last_swap["drain_timed_out"] is True and st.last_swap["aborted_requests"] == 3
    assert st.last_swap["running_at_pause"] == 3


def test_an_engine_that_cannot_list_its_requests_gets_vllms_abort_pause():
    st = run(SwapCoordinator(FakeEngine(drain_s=None), drain_timeout_s=0.05).swap(b"x", "sha256:a"))
    assert st.last_swap["drain_timed_out"] is True and st.last_swap["aborted_requests"] is None


def test_drain_timeout_fail_policy_leaves_weights_alone():
    eng = FakeEngine(drain_s=None)
    with pytest.raises(SwapError) as e:
        run(SwapCoordinator(eng, drain_timeout_s=0.05, drain_policy="fail").swap(b"x", "sha256:a"))
    assert e.value.reason == "DRAIN_TIMEOUT" and e.value.status == 503
    assert "factpatch_commit" not in eng.calls and not eng.paused


def test_concurrent_swaps_are_serialised():
    eng = FakeEngine()
    co = SwapCoordinator(eng)

    async def go():
        await asyncio.gather(co.swap(b"x", "sha256:a"), co.swap(b"y", "sha256:b"), co.swap(None, None))

    run(go())
    # Each swap's steps are contiguous: no stage of one between the pause and resume of another.
    seq = [c for c in eng.calls if c in ("factpatch_stage", "resume")]
    assert seq == ["factpatch_stage", "resume"] * 3


def test_revert_is_not_skipped_when_ranks_disagree():
    eng = FakeEngine()
    eng.version = ["sha256:a", None]  # e.g. after a rank was restarted
    co = SwapCoordinator(eng)

    async def go():
        await co.refresh()
        assert co.state.active_version is None
        await co.swap(None, None)

    run(go())
    assert "factpatch_commit" in eng.calls and eng.version == [None, None]
