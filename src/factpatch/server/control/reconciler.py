"""Drives every shard to its persisted desired version and moves rollouts through their states.

The loop is level-triggered: each pass reads the desired state from the database and the actual
state from each shard's agent, and acts on the difference. That is what makes it resume after a
control-plane restart and re-apply to a shard that restarted on its base weights.

Locks: one per shard, held while a shard is read and changed (the desired version is read inside
it, so a newer decision is never overwritten by an older one); rollout state changes take the
API's mutation lock, never while a shard lock is held.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from factpatch.core import failpoints
from factpatch.core.reasons import Refusal as Reason
from factpatch.core.swap_span import swap_span
from factpatch.server.control import releases
from factpatch.server.control.agent_client import AgentClient, AgentError
from factpatch.server.control.agent_token import AgentToken
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database, Rollout
from factpatch.server.state.rollout_state import TRAFFIC_SPLIT, RolloutReason, RolloutState
from factpatch.server.state.store import PatchStore, StoreCorrupt

log = logging.getLogger("factpatch.reconciler")
# Probe conditions that say the patch itself is wrong (RETRAIN_DUE says the chain grew, not that it broke).
BREAKING_CONDITIONS = frozenset({"EDIT_NOT_HOLDING", "REGRESSION_DRIFT"})
SYSTEM = "system:reconciler"
tracer = trace.get_tracer("factpatch.server.control")
SWAP_SPAN = "factpatch.swap"


@dataclass
class Refusal:
    shard: str
    version: str | None
    error: AgentError


def new_etag() -> str:
    return uuid.uuid4().hex[:16]


class Reconciler:
    def __init__(
        self, db: Database, store: PatchStore, audit: AuditLog, agent_token: AgentToken,
        mutation_lock: threading.RLock,
        *, interval: float = 1.0, agent_timeout: float = 120.0, status_timeout: float = 5.0,
        drain_timeout_s: float | None = None, agent_tls: ssl.SSLContext | None = None,
    ):
        self.db = db
        self.agent_tls = agent_tls  # CA (and client certificate) for agents that speak HTTPS
        self.store = store
        self.audit = audit
        self.agent_token = agent_token
        self._retrying: dict[str, tuple[str | None, int, int]] = {}  # shard -> (version, audit record, attempts)
        self.mutation_lock = mutation_lock
        self.interval = interval
        self.agent_timeout = agent_timeout
        self.status_timeout = status_timeout
        # How long a weight change waits for running requests, at the gateway and then in the engine
        # (None: the gateway waits 30 s and each shard uses its own setting).
        self.drain_timeout_s = drain_timeout_s
        self.gateway_drain_timeout = 30.0 if drain_timeout_s is None else drain_timeout_s
        self._clients: dict[str, AgentClient] = {}
        self._clients_lock = threading.Lock()
        self.shard_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="reconcile")
        self._thread: threading.Thread | None = None
        # shard -> (desired version, shard base fingerprint, retry-not-before): a refused version is
        # not pushed again in a tight loop
        self._held: dict[str, tuple[str | None, str, float]] = {}
        # set by the server when it runs a gateway: swap marks (keep traffic off a shard being
        # changed), apply/revert timings, and canary analysis for rollouts with gates
        self.swaps = None
        self.metrics = None
        self.analyzer = None
        # set by the server when it runs probes: () -> the conditions in force (type, shard, version, message)
        self.probe_conditions = None

    # lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._clients_lock:
            for c in self._clients.values():
                c.close()

    def kick(self) -> None:
        self._kick.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # keep reconciling; the next pass sees fresh state
                log.exception("reconcile pass failed")
            self._kick.wait(self.interval)
            self._kick.clear()

    # one pass

    def tick(self) -> None:
        names = [s.name for s in self.db.shards()]
        refusals = [r for r in self._pool.map(self.sync_shard, names) if r is not None]
        with self.mutation_lock:
            for refusal in refusals:
                self._roll_back_for(refusal)
            self.advance_rollouts()

    def _signature(self, digest: str) -> bytes | None:
        """The patch's detached signature, sent with it so shards that require one can check it."""
        row = self.db.patch(digest)
        return bytes(row["signature"]) if row is not None and row["signature"] else None

    def client(self, name: str, address: str) -> AgentClient:
        with self._clients_lock:
            c = self._clients.get(name)
            if c is None or c.address != address.rstrip("/"):
                c = self._clients[name] = AgentClient(address, self.agent_token.for_shard(name), timeout=self.agent_timeout,
                                                     tls=self.agent_tls)
            return c

    def sync_shard(self, name: str) -> Refusal | None:
        with self.shard_locks[name]:
            shard = self.db.shard(name)
            if shard is None:
                return None
            agent = self.client(name, shard.agent_address)
            try:
                st = agent.status(timeout=self.status_timeout)
            except AgentError as e:
                self.db.observe(name, None, "UNREACHABLE", e.reason, e.message)
                return None
            desired = shard.desired_version
            if st.swapping:
                self.db.observe(name, st.raw, "SYNCING")
                return None
            if st.active_version == desired:
                self._held.pop(name, None)
                self.db.observe(name, st.raw, "SERVING")
                return None
            held = self._held.get(name)
            if held and held[:2] == (desired, st.base_fingerprint) and time.time() < held[2]:
                self.db.observe(name, st.raw, "ERROR", shard.last_error_reason, shard.last_error)
                return None
            self._swap_begin(name)
            try:
                return self._swap(name, agent, st, desired)
            finally:
                self._swap_end(name)  # after the shard's new state is recorded

    def _swap(self, name: str, agent: AgentClient, st, desired: str | None) -> Refusal | None:
        action = "revert" if desired is None else "apply"
        # The intent is on record before the shard is asked: a crash in between leaves it PENDING
        # (settled INTERRUPTED at the next start), never no trace. Retries of the same change reuse
        # their record (one per change, not one per reconcile pass).
        retrying = self._retrying.get(name)
        if retrying is not None and retrying[0] == desired:
            record, attempts = retrying[1], retrying[2] + 1
        else:
            record, attempts = self.audit.begin(SYSTEM, f"agent/{action}", "", f"shard={name} version={desired or 'base'}"), 1
        self._retrying.pop(name, None)
        with swap_span(tracer, SWAP_SPAN, kind=SpanKind.CLIENT, shard=name, from_version=st.active_version,
                       to_version=desired, attributes={"factpatch.swap.trigger": "reconcile",
                                                       "factpatch.swap.attempt": attempts}) as sw:
            return self._swap_call(name, agent, st, desired, action, record, attempts, sw)

    def _swap_call(self, name: str, agent: AgentClient, st, desired: str | None, action: str, record, attempts: int,
                   sw) -> Refusal | None:
        t0 = time.perf_counter()
        try:
            if desired is None:
                after = agent.revert(drain_timeout_s=self.drain_timeout_s)
            else:
                after = agent.apply(self.store.get(desired), desired, drain_timeout_s=self.drain_timeout_s,
                                    signature=self._signature(desired))
        except (StoreCorrupt, FileNotFoundError) as e:
            sw.fail("store_corrupt", "STORE_CORRUPT", str(e))
            self.db.observe(name, st.raw, "ERROR", "STORE_CORRUPT", str(e))
            self.audit.finish(record, "STORE_CORRUPT", f"{attempts} attempt(s); last: {e}")
            self._retrying[name] = (desired, record, attempts)
            return None
        except AgentError as e:
            if not e.permanent:  # unreachable, swap in progress, 5xx: try again next pass
                sw.fail("retry", e.reason, e.message)
                self.db.observe(name, st.raw, "SYNCING", e.reason, e.message)
                self.audit.finish(record, f"RETRY/{e.reason}", f"{attempts} attempt(s); last: {e.message}")
                self._retrying[name] = (desired, record, attempts)
                return None
            sw.fail("refused", e.reason, e.message)
            self.db.observe(name, st.raw, "ERROR", e.reason, e.message)
            log.warning("shard %s refused %s: %s %s", name, desired or "base", e.reason, e.message,
                        extra={"shard": name, "action": action, "version": desired or "base", "reason": e.reason})
            self._learn_compat(desired, st.base_fingerprint, e.reason)
            self._held[name] = (desired, st.base_fingerprint, time.time() + 30.0)
            self.audit.finish(record, f"REFUSED/{e.reason}", e.message)
            return Refusal(name, desired, e)
        failpoints.hit("reconciler.after_agent_call")
        dt = time.perf_counter() - t0
        if self.metrics is not None:
            (self.metrics.revert_seconds if desired is None else self.metrics.apply_seconds).labels(name).observe(dt)
        self._held.pop(name, None)
        if desired is not None:
            self._learn_compat(desired, st.base_fingerprint, None)
        ok = after.active_version == desired
        if not ok:  # answered, but the shard reports another version: the next pass looks again
            sw.fail("unconfirmed", "VERSION_MISMATCH", f"shard reports {after.active_version or 'base'}")
        self.db.observe(name, after.raw, "SERVING" if ok else "SYNCING")
        self.audit.finish(record, "OK", f"{dt:.3f}s")
        log.info("shard %s: %s %s in %.3f s", name, action, desired or "base", dt,
                 extra={"shard": name, "action": action, "version": desired or "base", "seconds": round(dt, 4)})
        return None

    def _swap_begin(self, name: str) -> None:
        if self.swaps is not None:
            self.swaps.begin(name)
            # Requests the gateway already sent finish on the weights their header names.
            if not self.swaps.drain(name, self.gateway_drain_timeout):
                log.warning("shard %s: gateway requests still running after %.0f s; swapping anyway",
                            name, self.gateway_drain_timeout)

    def _swap_end(self, name: str) -> None:
        if self.swaps is not None:
            self.swaps.end(name, self.db.generation)

    def _learn_compat(self, digest: str | None, shard_fp: str, reason: str | None) -> None:
        if not digest or not shard_fp:
            return
        row = self.db.patch(digest)
        patch_fp = row["base_fingerprint"] if row else None
        if not patch_fp:
            return
        if reason is None:
            self.db.set_compat(patch_fp, shard_fp, True)
        elif reason == Reason.BASE_MISMATCH:
            self.db.set_compat(patch_fp, shard_fp, False, reason)

    # rollouts

    def _roll_back_for(self, refusal: Refusal) -> None:
        for r in self.db.rollouts(active_only=True):
            if r.state != RolloutState.PROGRESSING or refusal.shard not in r.target_shards or refusal.version != r.patch:
                continue
            e = refusal.error
            self.start_rollback(r, RolloutState.ROLLING_BACK, e.reason, f"shard {refusal.shard} refused the patch: {e.message}",
                                failed_shard=(refusal.shard, e))

    def start_rollback(self, r: Rollout, state: str, reason: str, message: str, failed_shard=None) -> Rollout:
        """Every shard the rollout touched goes back to the version it had before (caller holds the mutation lock)."""
        with self._transitions() as c:
            for rs in r.shards:
                if failed_shard and rs.shard == failed_shard[0]:
                    rs.error_reason, rs.error = failed_shard[1].reason, failed_shard[1].message
                rs.desired_version = rs.previous_version
                self.db.upsert_rollout_shard(c, r.id, rs)
                self.db.set_desired(c, rs.shard, rs.previous_version)
            self._transition(c, r, state, reason, message)
        self.kick()
        return r

    @contextmanager
    def _transitions(self) -> Iterator[Any]:
        """The transaction a rollout decision commits in (states and their audit records together); the
        `rollout.after_transition` failpoint fires once it has committed, before anything acts on it."""
        with self.db.tx() as c:
            yield c
        failpoints.hit("rollout.after_transition")

    def _transition(self, c, r: Rollout, state: str, reason: str | None = None, message: str | None = None) -> None:
        """The rollout's new state and its audit record, in the caller's transaction."""
        log.info("rollout %s: %s -> %s%s", r.id, r.state, state, f" ({reason})" if reason else "",
                 extra={"rollout": r.id, "patch": r.patch, "from_state": str(r.state), "state": str(state),
                        "reason": reason or "", "step": r.current_step, "detail": message or ""})
        r.state = state
        if reason is not None:
            r.reason = reason
        if message is not None:
            r.message = message
        r.etag = new_etag()
        r.updated = time.time()
        self.db.update_rollout(c, r)
        self.audit.record_in(c, SYSTEM, "rollout/" + str(state).lower(), f"rollout={r.id}", r.reason or "OK", r.message)

    def advance_rollouts(self) -> None:
        shards = {s.name: s for s in self.db.shards()}

        def at(name: str, version: str | None) -> bool:
            s = shards.get(name)
            return s is not None and s.health == "SERVING" and (s.observed.get("active_version") or None) == version

        for r in self.db.rollouts(active_only=True):
            if self._probes_object(r):
                continue
            if r.state == RolloutState.PROGRESSING:
                step = r.steps[r.current_step]["shards"]
                if all(at(n, r.patch) for n in step):
                    last = r.current_step == len(r.steps) - 1
                    analysed = r.gates and self.analyzer is not None
                    watch = analysed and last and self.analyzer.watches_after_promotion(r)
                    with self._transitions() as c:
                        if analysed and (not last or watch):
                            self.analyzer.begin(c, r, post_promotion=last)
                            self._transition(c, r, RolloutState.ANALYZING, "",
                                             "watching the fleet after promotion" if last else "canary analysis running")
                        elif last:
                            self.succeed(c, r)
                        else:
                            self._transition(c, r, RolloutState.PAUSED, "", "")
                elif time.time() - r.step_started > r.progress_deadline_s:
                    self.start_rollback(r, RolloutState.ROLLING_BACK, RolloutReason.PROGRESS_DEADLINE,
                                        f"step {r.current_step} did not converge within {r.progress_deadline_s}s")
            elif r.state == RolloutState.ANALYZING:
                self._analyse(r)
            elif r.state in (RolloutState.ROLLING_BACK, RolloutState.ABORTING):
                if all(at(rs.shard, shards[rs.shard].desired_version) for rs in r.shards if rs.shard in shards):
                    with self._transitions() as c:
                        self._transition(c, r, RolloutState.FAILED if r.state == RolloutState.ROLLING_BACK else RolloutState.ABORTED)

    def _probes_object(self, r: Rollout) -> bool:
        """A live probe found the rollout's patch breaking on one of its shards (an edit not holding,
        unrelated answers drifting): roll it back, whatever step or analysis it is in."""
        if self.probe_conditions is None or r.state not in TRAFFIC_SPLIT:
            return False
        shards = set(r.target_shards)
        # found during this rollout (one from an earlier rollout of the patch is about that one)
        found = [cond for cond in self.probe_conditions()
                 if cond.type in BREAKING_CONDITIONS and cond.version == r.patch and cond.shard in shards
                 and cond.since >= r.created]
        if not found:
            return False
        # every condition found is named: a patch that breaks unrelated answers often breaks its own too
        self.start_rollback(r, RolloutState.ROLLING_BACK, RolloutReason.PROBE_CONDITION,
                            "probe found " + "; ".join(f"{c.type} on {c.shard}: {c.message}" for c in found))
        return True

    def succeed(self, c, r: Rollout, message: str = "") -> None:
        """The last step holds: SUCCEEDED, and every target shard is released on the patch (Rollback's history)."""
        self._transition(c, r, RolloutState.SUCCEEDED, "", message)
        for rs in r.shards:
            releases.record(self.db, c, rs.shard, r.patch, f"rollout {r.id}", r.created_by, before=rs.previous_version)

    def _analyse(self, r: Rollout) -> None:
        """Acts on the analysis of an ANALYZING rollout: fail rolls back, pass promotes, no data pauses."""
        decision, run = self.analyzer.step(r)
        watch = bool(run.get("post_promotion"))
        if decision == "FAIL":
            what = "analysis after promotion failed: " if watch else "canary analysis failed: "
            self.start_rollback(r, RolloutState.ROLLING_BACK, RolloutReason.ANALYSIS_FAILED, what + run["message"])
        elif decision == "PASS" and watch:
            with self._transitions() as c:
                self.succeed(c, r, "the watch after promotion passed: " + run["message"])
        elif decision == "PASS":
            r.current_step += 1
            step = set(r.steps[r.current_step]["shards"])
            with self._transitions() as c:
                for rs in r.shards:
                    if rs.shard in step:
                        rs.desired_version = r.patch
                        self.db.upsert_rollout_shard(c, r.id, rs)
                        self.db.set_desired(c, rs.shard, r.patch)
                r.step_started = time.time()
                self._transition(c, r, RolloutState.PROGRESSING, "",
                                 f"canary analysis passed, promoted to step {r.current_step}: {run['message']}")
            self.kick()
        elif decision == "INCONCLUSIVE":
            with self._transitions() as c:
                self._transition(c, r, RolloutState.PAUSED, RolloutReason.ANALYSIS_INCONCLUSIVE, run["message"])

    # the fast path back: to base (RevertToBase) or to an earlier version (Rollback)

    def switch_now(self, targets: dict[str, str | None], deadline: float | None) -> list[dict]:
        """Switches the shards in parallel to the given versions (None = base); each one's desired
        version must already say so. A version is written from its patch on the shard (base plus its
        change), as a rollout's apply is; nothing is reloaded."""

        caller = otel_context.get_current()  # the API call's span: parent of each shard's swap span

        def one(name: str) -> dict:
            token = otel_context.attach(caller)  # pool threads do not inherit the caller's context
            try:
                return switch(name)
            finally:
                otel_context.detach(token)

        def switch(name: str) -> dict:
            version = targets[name]
            t0 = time.perf_counter()
            timeout = self.agent_timeout if deadline is None else max(0.1, min(self.agent_timeout, deadline - time.time()))
            with self.shard_locks[name]:
                shard = self.db.shard(name)
                with swap_span(tracer, SWAP_SPAN, kind=SpanKind.CLIENT, shard=name, to_version=version,
                               from_version=shard.observed.get("active_version") if shard else None,
                               attributes={"factpatch.swap.trigger": "switch_now"}) as sw:
                    self._swap_begin(name)
                    try:
                        drain = None if self.drain_timeout_s is None else min(self.drain_timeout_s, timeout)
                        agent = self.client(name, shard.agent_address)
                        if version is None:
                            after = agent.revert(timeout=timeout, drain_timeout_s=drain)
                        else:
                            after = agent.apply(self.store.get(version), version, timeout=timeout,
                                                drain_timeout_s=drain, signature=self._signature(version))
                        if self.metrics is not None:
                            (self.metrics.revert_seconds if version is None else self.metrics.apply_seconds).labels(
                                name).observe(time.perf_counter() - t0)
                        ok = after.active_version == version
                        self.db.observe(name, after.raw, "SERVING" if ok else "SYNCING")
                    except (StoreCorrupt, FileNotFoundError) as e:
                        sw.fail("store_corrupt", "STORE_CORRUPT", str(e))
                        self.db.observe(name, None, "ERROR", "STORE_CORRUPT", str(e))
                        return {"shard": name, "ok": False, "error_reason": "STORE_CORRUPT", "error": str(e),
                                "seconds": time.perf_counter() - t0}
                    except AgentError as e:
                        sw.fail("unreachable" if e.reason == "UNREACHABLE" else "refused", e.reason, e.message)
                        self.db.observe(name, None, "UNREACHABLE" if e.reason == "UNREACHABLE" else "ERROR", e.reason,
                                        e.message)
                        return {"shard": name, "ok": False, "error_reason": e.reason, "error": e.message,
                                "seconds": time.perf_counter() - t0}
                    finally:
                        self._swap_end(name)
                    if not ok:
                        sw.fail("unconfirmed", "VERSION_MISMATCH", f"shard reports {after.active_version or 'base'}")
            return {"shard": name, "ok": ok, "error_reason": "", "error": "", "seconds": time.perf_counter() - t0}

        results = list(self._pool.map(one, list(targets)))
        self.kick()
        return results
