"""The swap protocol: one weight version per response, every rank or none, one swap at a time.

    lock → stage on all ranks (no writes) → pause: wait for in-flight requests (bounded)
         → commit on all ranks → reset prefix cache → resume → unlock

Drain policy, once `drain_timeout_s` passes with requests still running:
- "abort" (default): the requests sent before the pause that are still running are aborted (they end
  with finish_reason "abort" and never continue on the new weights), then the swap goes ahead — a swap
  always finishes in bounded time. Requests that arrived during the drain are not touched.
- "fail": generation resumes on the old weights and the swap is refused with DRAIN_TIMEOUT.
Requests that arrive while paused wait in vLLM's queue and run entirely on the new version.
A caller may give one swap its own drain budget (an urgent revert: 0 aborts at once).

Staging runs before the pause so the engine keeps serving while new weights are computed, and a
patch that fails on any rank never pauses anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from factpatch.core.reasons import http_status
from factpatch.core.swap_span import swap_span

log = logging.getLogger("factpatch.plugin.swap")
tracer = trace.get_tracer("factpatch.plugin")
SWAP_SPAN = "factpatch.shard.swap"

POLICIES = ("abort", "fail")
ABORT_SETTLE_S = 30.0  # after cutting the stragglers off, how long the engine may take to go idle
MAX_DRAIN_TIMEOUT_S = 3600.0  # the longest drain budget a swap may be given (agent requests, `serve --drain-timeout`)


class Engine(Protocol):
    async def pause_generation(self, *, mode: str = ..., clear_cache: bool = ...) -> None: ...
    async def resume_generation(self) -> None: ...
    async def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> bool: ...
    async def abort(self, request_id: Any, internal: bool = ...) -> None: ...
    async def collective_rpc(self, method: str, timeout: float | None = ..., args: tuple = ..., kwargs: dict | None = ...) -> list[Any]: ...


class SwapError(Exception):
    def __init__(self, reason: str, message: str, status: int):
        super().__init__(message)
        self.reason, self.status = reason, status


@dataclass
class SwapState:
    active_version: str | None = None
    applied_at: str | None = None
    swapping: bool = False
    ranks: list[dict[str, Any]] = field(default_factory=list)
    # The last swap: its timings (seconds), whether the drain timed out and how many requests it cut off.
    last_swap: dict[str, Any] = field(default_factory=dict)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


class SwapCoordinator:
    def __init__(self, engine: Engine, *, drain_timeout_s: float = 30.0, drain_policy: str = "abort",
                 rpc_timeout_s: float | None = 300.0):
        if drain_policy not in POLICIES:
            raise ValueError(f"drain policy must be one of {POLICIES}, got {drain_policy!r}")
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self.drain_policy = drain_policy
        self.rpc_timeout_s = rpc_timeout_s
        self.state = SwapState()
        self._lock = asyncio.Lock()

    async def _rpc(self, method: str, *args: Any) -> list[dict[str, Any]]:
        return await self.engine.collective_rpc(method, timeout=self.rpc_timeout_s, args=args)

    async def refresh(self) -> SwapState:
        ranks = await self._rpc("factpatch_state")
        self._absorb(ranks)
        return self.state

    def _absorb(self, ranks: list[dict[str, Any]]) -> None:
        ranks = sorted(ranks, key=lambda r: r.get("rank", 0))
        self.state.ranks = ranks
        versions = {r.get("active_version") for r in ranks}
        self.state.active_version = versions.pop() if len(versions) == 1 else None
        at = ranks[0].get("applied_at") if ranks else None
        self.state.applied_at = _iso(at) if at else None

    async def swap(self, data: bytes | None, version: str | None, *, drain_timeout_s: float | None = None) -> SwapState:
        """Make `version` (patch bytes; None = base) active on every rank, or leave all as they were.

        `drain_timeout_s` replaces the coordinator's drain timeout for this swap only."""
        async with self._lock:
            budget = self.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
            with swap_span(tracer, SWAP_SPAN, kind=SpanKind.INTERNAL, from_version=self.state.active_version,
                           to_version=version, attributes={"factpatch.swap.drain_budget_s": budget}) as sw:
                ranks = self.state.ranks
                if ranks and all(r.get("active_version") == version for r in ranks):
                    sw.done("unchanged")
                    return self.state  # already active on every rank: nothing to do
                self.state.swapping = True
                try:
                    state = await self._swap_locked(data, version, budget)
                except SwapError as e:
                    sw.fail("refused", e.reason, str(e))
                    raise
                finally:
                    self.state.swapping = False
                for key, value in state.last_swap.items():  # the phases: stage, drain, write; requests cut off
                    if value is not None:
                        sw.span.set_attribute(f"factpatch.swap.{key}", value)
                return state

    async def _swap_locked(self, data: bytes | None, version: str | None, drain_timeout_s: float) -> SwapState:
        t0 = time.perf_counter()
        staged = await self._rpc("factpatch_stage", data, version)
        bad = [r for r in staged if not r.get("ok")]
        if bad:
            await self._rpc("factpatch_discard")
            r = bad[0]
            raise SwapError(r.get("reason", "STAGE_FAILED"), r.get("message", ""), http_status(r.get("reason")))
        t_staged = time.perf_counter()

        timed_out, cut_off, running = await self._pause(drain_timeout_s)
        t_paused = time.perf_counter()
        try:
            results = await self._rpc("factpatch_commit", version)
            failed = [r for r in results if not r.get("ok")]
            if failed:
                # Ranks that committed go back to the previous version; the failed ones restored themselves.
                rolled = await self._rpc("factpatch_rollback")
                await self.engine.reset_prefix_cache()  # cheap insurance: no KV from the aborted attempt
                await self.refresh()
                r = failed[0]
                raise SwapError(r.get("reason", "WRITE_FAILED"),
                                f"{r.get('message', '')}; rollback ok={all(x.get('ok') for x in rolled)}", 500)
            t_written = time.perf_counter()
            # KV computed with the old weights must never serve the new version.
            if not await self.engine.reset_prefix_cache():
                log.warning("reset_prefix_cache returned False after a weight change")
            self._absorb(results)
        finally:
            await self.engine.resume_generation()
        t_done = time.perf_counter()
        self.state.last_swap = {
            "stage_s": t_staged - t0,
            "drain_s": t_paused - t_staged,
            "write_s": t_written - t_paused,
            "paused_s": t_done - t_staged,
            "total_s": t_done - t0,
            "drain_timeout_s": drain_timeout_s,
            "drain_timed_out": timed_out,
            "aborted_requests": cut_off,
            # requests the engine held when the change began: drained, or cut off (None: cannot say)
            "running_at_pause": running,
        }
        return self.state

    async def _pause(self, drain_timeout_s: float) -> tuple[bool, int | None, int | None]:
        """Pause generation. (drain timed out, requests cut off, requests running at the pause — the
        last two None where the engine cannot say)."""
        in_flight: list[str] = []
        known = self._unfinished() is not None
        waiting = asyncio.ensure_future(self._wait_for_drain(in_flight))
        # Let the task take its snapshot and send the pause before the budget is counted: with a zero
        # budget the wait below would otherwise time out before the snapshot, find nothing to cut off,
        # and drain everything instead.
        await asyncio.sleep(0)
        running = len(in_flight) if known else None
        done, _ = await asyncio.wait({waiting}, timeout=drain_timeout_s)
        if done:
            waiting.result()
            return False, 0, running
        if self.drain_policy == "fail":
            waiting.cancel()
            await self.engine.resume_generation()
            await self._rpc("factpatch_discard")
            raise SwapError("DRAIN_TIMEOUT",
                            f"requests still running after {drain_timeout_s} s; weights unchanged", 503)
        unfinished = self._unfinished()
        if unfinished is not None:
            # Cut off only what was sent before the pause: requests queued since have not started and
            # will run on the new weights. vLLM's own mode="abort" would cancel those as well.
            stragglers = [r for r in in_flight if r in unfinished]
            if stragglers:
                log.warning("drain timed out after %.2f s; aborting the %d requests still running",
                            drain_timeout_s, len(stragglers))
                await self.engine.abort(stragglers, internal=True)
            try:
                await asyncio.wait_for(waiting, timeout=ABORT_SETTLE_S)
                # Timed out only if something was still running: with nothing sent before the pause left
                # unfinished (a zero budget on an idle engine), the drain was complete, not cut short.
                return bool(stragglers), len(stragglers), running
            except asyncio.TimeoutError:
                log.error("the engine did not go idle %.0f s after the abort; aborting everything", ABORT_SETTLE_S)
        else:
            log.warning("drain timed out after %.2f s; aborting every request", drain_timeout_s)
        waiting.cancel()
        await self.engine.pause_generation(mode="abort", clear_cache=False)
        return True, None, running

    async def _wait_for_drain(self, in_flight: list[str]) -> None:
        # The snapshot and the pause message are taken and sent in one step of the event loop (nothing
        # awaits between them), so every request sent before the pause is in `in_flight`.
        in_flight.extend(self._unfinished() or ())
        await self.engine.pause_generation(mode="wait", clear_cache=False)

    def _unfinished(self) -> set[str] | None:
        """Internal ids of the requests vLLM's output processor has not finished; None if it cannot say."""
        states = getattr(getattr(self.engine, "output_processor", None), "request_states", None)
        return set(states) if isinstance(states, dict) else None


