"""RolloutService: start, watch, promote and abort staged rollouts; revert the fleet to base.

The servicer only records decisions (rollout records and each shard's desired version, in one
transaction); the reconciler carries them out and advances the rollout as shards converge.
"""

from __future__ import annotations

import json
import time
import uuid

import grpc

from factpatch.core.reasons import Refusal
from factpatch.server.api import convert
from factpatch.server.api.context import ControlPlane
from factpatch.server.api.errors import ApiError, invalid, not_found, precondition
from factpatch.server.api.interceptor import call_principal
from factpatch.server.api.paging import offset_page, page_offset, page_size
from factpatch.server.api.services.patches import check_digest
from factpatch.server.control import analysis, releases
from factpatch.server.control.prometheus_gate import PrometheusUnreachable
from factpatch.server.control.reconciler import new_etag
from factpatch.server.state.db import Rollout, RolloutShard
from factpatch.server.state.rollout_state import FINAL, RolloutReason, RolloutState
from factpatch.v1 import rollout_pb2, rollout_pb2_grpc

DEFAULT_DEADLINE_S = 300


class RolloutService(rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, cp: ControlPlane):
        self.cp = cp

    def _msg(self, r: Rollout) -> rollout_pb2.Rollout:
        return convert.rollout(r, {s.name: s for s in self.cp.db.shards()}, analysis.load(self.cp.db, r.id),
                               analysis.load_policy(self.cp.db, r.id))

    def _rollout(self, rollout_id: str) -> Rollout:
        r = self.cp.db.rollout(rollout_id)
        if r is None:
            raise not_found("ROLLOUT_NOT_FOUND", f"no rollout {rollout_id!r}", rollout=rollout_id)
        return r

    @staticmethod
    def _check_etag(r: Rollout, etag: str) -> None:
        if etag and etag != r.etag:
            raise ApiError(grpc.StatusCode.ABORTED, "ETAG_MISMATCH",
                           f"rollout {r.id} changed (etag {r.etag}, request has {etag}); read it again", etag=r.etag)

    # start

    def _steps(self, request, targets: list[str]) -> list[dict]:
        if request.steps:
            steps = [{"shards": sorted(set(s.shards)), "traffic_percent": s.traffic_percent} for s in request.steps]
            if steps[-1]["shards"] != targets:
                steps.append({"shards": targets, "traffic_percent": 100})
        else:
            canary = sorted(set(request.canary_shards)) or targets[:1]
            steps = [{"shards": canary, "traffic_percent": request.canary_traffic_percent}]
            if canary != targets:
                steps.append({"shards": targets, "traffic_percent": 100})
        prev: set[str] = set()
        for i, s in enumerate(steps):
            cur = set(s["shards"])
            if not cur:
                raise invalid("BAD_STEPS", f"step {i} names no shards", field="steps")
            if not cur <= set(targets):
                raise invalid("BAD_STEPS", f"step {i} names shards outside the rollout: {sorted(cur - set(targets))}",
                              field="steps")
            if not prev <= cur or (prev == cur and i > 0):
                raise invalid("BAD_STEPS", f"step {i} must include every shard of step {i - 1} and add at least one",
                              field="steps")
            if not 0 <= s["traffic_percent"] <= 100:
                raise invalid("BAD_STEPS", f"step {i}: traffic_percent must be 0..100", field="steps")
            prev = cur
        return steps

    def _check_base(self, patch_row, targets: list[str]) -> None:
        patch_fp = patch_row["base_fingerprint"]
        tensors = tuple(json.loads(patch_row["tensors"]))
        for name in targets:
            shard_fp = str(self.cp.db.shard(name).observed.get("base_fingerprint") or "")
            if not shard_fp:
                continue
            ok = self.cp.basecheck.check(shard_fp, patch_fp, tensors)
            if ok is None:
                row = self.cp.db.compat(patch_fp, shard_fp)
                ok = None if row is None else bool(row["compatible"])
            if ok is False:
                raise precondition(
                    Refusal.BASE_MISMATCH,
                    f"patch {patch_row['digest']} was made for base {patch_fp} (model {patch_row['base_model']!r}); "
                    f"shard {name} serves a base whose tensors fingerprint differently",
                    shard=name,
                )

    @staticmethod
    def _policy(request) -> analysis.Policy:
        p = request.analysis_policy
        for name in ("failure_limit", "inconclusive_limit", "measurement_seconds", "post_promotion_seconds"):
            if getattr(p, name) < 0:
                raise invalid("BAD_ANALYSIS_POLICY", f"analysis_policy.{name} must not be negative",
                              field=f"analysis_policy.{name}")
        if request.HasField("analysis_policy") and not request.gates:
            raise invalid("BAD_ANALYSIS_POLICY", "analysis_policy needs gates to judge", field="analysis_policy")
        window = request.analysis_seconds or analysis.DEFAULT_WINDOW_S
        if p.measurement_seconds > window:
            raise invalid("BAD_ANALYSIS_POLICY", f"analysis_policy.measurement_seconds ({p.measurement_seconds}) is longer "
                          f"than the window ({window} s)", field="analysis_policy.measurement_seconds")
        return analysis.Policy(p.failure_limit, p.inconclusive_limit, float(p.measurement_seconds), float(p.post_promotion_seconds))

    def _check_query(self, i: int, g) -> None:
        """A Prometheus gate's query is checked by Prometheus's own parser before anything starts."""
        if g.metric != analysis.PROMETHEUS:
            if g.query:
                raise invalid("BAD_GATE", f"gates[{i}].query is only for metric {analysis.PROMETHEUS!r}",
                              field=f"gates[{i}].query")
            return
        if not g.query.strip():
            raise invalid("BAD_GATE", f"gates[{i}]: metric {analysis.PROMETHEUS!r} needs a query", field=f"gates[{i}].query")
        if not (g.max_ratio > 0 or g.max_value > 0):
            raise invalid("BAD_GATE", f"gates[{i}]: a Prometheus gate needs max_ratio or max_value to judge by",
                          field=f"gates[{i}]")
        if self.cp.prometheus is None:
            raise precondition("NO_PROMETHEUS", f"gates[{i}] asks Prometheus, and the control plane has none "
                               "(serve --prometheus-url)", field=f"gates[{i}].query")
        try:
            error = self.cp.prometheus.parse_error(g.query)
        except PrometheusUnreachable as e:
            raise precondition("PROMETHEUS_UNREACHABLE", f"cannot check gates[{i}].query: {e}",
                               field=f"gates[{i}].query") from None
        if error:
            raise invalid("BAD_GATE", f"gates[{i}].query does not parse: {error}", field=f"gates[{i}].query")

    def StartRollout(self, request, context):
        db = self.cp.db
        patch_row = db.patch(check_digest(request.patch, "patch"))
        if patch_row is None:
            raise not_found("PATCH_NOT_FOUND", f"no patch {request.patch} in the store", digest=request.patch)
        known = {s.name: s for s in db.shards()}
        targets = sorted(set(request.shards)) or sorted(known)
        if not targets:
            raise precondition("NO_SHARDS", "no shards are registered")
        for name in sorted(set(targets) | set(request.canary_shards) | {n for s in request.steps for n in s.shards}):
            if name not in known:
                raise not_found("SHARD_NOT_FOUND", f"no shard named {name!r}", shard=name)
        steps = self._steps(request, targets)
        running = db.rollouts(active_only=True)
        for r in running:
            overlap = sorted(set(r.target_shards) & set(targets))
            if overlap:
                raise precondition("ROLLOUT_CONFLICT", f"rollout {r.id} ({r.state}) is still running on {', '.join(overlap)}",
                                   rollout=r.id)
        # rollouts on other shards run beside this one, each canary with its own share of all traffic
        taken = sum(int(r.steps[r.current_step].get("traffic_percent") or 0) for r in running)
        first = int(steps[0]["traffic_percent"] or 0)
        if first and taken + first > 100:
            raise precondition("TRAFFIC_OVERCOMMITTED", f"running rollouts' canaries take {taken} % of the traffic; "
                               f"{first} % more is over 100 %", field="canary_traffic_percent")
        self._check_base(patch_row, targets)
        deadline = request.progress_deadline_seconds or DEFAULT_DEADLINE_S
        if deadline < 0:
            raise invalid("BAD_DEADLINE", "progress_deadline_seconds must be positive", field="progress_deadline_seconds")
        for i, g in enumerate(request.gates):
            if g.metric not in analysis.METRICS:
                raise invalid("BAD_GATE", f"gates[{i}].metric must be one of {', '.join(analysis.METRICS)}, got {g.metric!r}",
                              field=f"gates[{i}].metric")
            if not (g.max_ratio >= 0 and g.max_value >= 0) or g.min_samples < 0:  # NaN fails ">= 0"
                raise invalid("BAD_GATE", f"gates[{i}]: max_ratio, min_samples and max_value must be numbers, not negative",
                              field=f"gates[{i}]")
            self._check_query(i, g)
        if request.analysis_seconds < 0:
            raise invalid("BAD_ANALYSIS_WINDOW", "analysis_seconds must not be negative", field="analysis_seconds")
        policy = self._policy(request)
        now = time.time()
        r = Rollout(
            id="ro-" + uuid.uuid4().hex[:12], patch=request.patch, state=RolloutState.PROGRESSING, steps=steps, current_step=0,
            etag=new_etag(), reason="", message="", progress_deadline_s=deadline, created_by=call_principal(),
            created=now, updated=now, step_started=now,
            gates=[{"metric": g.metric, "max_ratio": g.max_ratio, "min_samples": g.min_samples, "max_value": g.max_value,
                    **({"query": g.query} if g.query else {})} for g in request.gates],
        )
        first = set(steps[0]["shards"])
        with db.tx() as c:
            db.insert_rollout(c, r)
            if r.gates:
                analysis.set_window(c, r.id, request.analysis_seconds or analysis.DEFAULT_WINDOW_S, policy)
            for name in targets:
                prev = known[name].desired_version
                rs = RolloutShard(name, prev, request.patch if name in first else prev)
                r.shards.append(rs)
                db.upsert_rollout_shard(c, r.id, rs)
                if name in first:
                    db.set_desired(c, name, request.patch)
        self.cp.reconciler.kick()
        return self._msg(db.rollout(r.id))

    # read

    def GetRollout(self, request, context):
        return self._msg(self._rollout(request.id))

    def ListRollouts(self, request, context):
        size, offset = page_size(request.page_size), page_offset(request.page_token)
        rows = self.cp.db.rollouts(active_only=request.active_only, limit=size + 1, offset=offset)
        # A rollout's steps, gates and messages make it a few KiB at most, but a page stops before a
        # client's message limit all the same.
        rollouts, token = offset_page(rows, size, offset, self._msg)
        return rollout_pb2.ListRolloutsResponse(rollouts=rollouts, next_page_token=token)

    def WatchRollout(self, request, context):
        r = self._rollout(request.id)
        db, last = self.cp.db, None
        gen = db.generation
        while context.is_active():
            r = db.rollout(request.id)
            if r.etag != last:
                last = r.etag
                yield self._msg(r)
            if r.state in FINAL:
                return
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                # fail with the deadline, never end cleanly: a caller must not read "not final yet"
                # as "done" (a clean end could also beat the caller's own deadline to it)
                raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, "WATCH_DEADLINE",
                               f"rollout {r.id} was still {r.state} at the call's deadline", state=r.state)
            gen = db.wait_for_change(gen, min(1.0, remaining) if remaining else 1.0)

    # change

    def Promote(self, request, context):
        r = self._rollout(request.id)
        self._check_etag(r, request.etag)
        if r.state != RolloutState.PAUSED:
            raise precondition("ROLLOUT_NOT_PAUSED", f"rollout {r.id} is {r.state}; only a PAUSED rollout can be promoted",
                               state=r.state)
        db = self.cp.db
        if r.current_step == len(r.steps) - 1:  # paused after an inconclusive watch of the last step
            with db.tx() as c:
                self.cp.reconciler.succeed(c, r, f"promoted by {call_principal()} after an inconclusive watch")
            return self._msg(db.rollout(r.id))
        r.current_step += 1
        step = set(r.steps[r.current_step]["shards"])
        with db.tx() as c:
            for rs in r.shards:
                if rs.shard in step:
                    rs.desired_version = r.patch
                    db.upsert_rollout_shard(c, r.id, rs)
                    db.set_desired(c, rs.shard, r.patch)
            r.state, r.etag, r.updated, r.step_started = RolloutState.PROGRESSING, new_etag(), time.time(), time.time()
            db.update_rollout(c, r)
        self.cp.reconciler.kick()
        return self._msg(db.rollout(r.id))

    def Abort(self, request, context):
        r = self._rollout(request.id)
        self._check_etag(r, request.etag)
        if r.state in FINAL:
            raise precondition("ROLLOUT_FINISHED", f"rollout {r.id} already ended ({r.state})", state=r.state)
        if r.state == RolloutState.ABORTING:
            return self._msg(r)
        self.cp.reconciler.start_rollback(r, RolloutState.ABORTING, RolloutReason.ABORTED_BY_USER, request.message or f"aborted by {call_principal()}")
        return self._msg(self.cp.db.rollout(r.id))

    def RevertToBase(self, request, context):
        db = self.cp.db
        known = {s.name for s in db.shards()}
        names = sorted(set(request.shards)) or sorted(known)
        for n in names:
            if n not in known:
                raise not_found("SHARD_NOT_FOUND", f"no shard named {n!r}", shard=n)
        t0 = time.perf_counter()
        aborted = []
        chosen = set(names)
        active = db.rollouts(active_only=True)
        stable = {n: releases.stable_version(db, n, active) for n in names}
        with db.tx() as c:
            for r in active:
                if not chosen & set(r.target_shards):
                    continue
                for rs in r.shards:
                    rs.desired_version = None if rs.shard in chosen else rs.previous_version
                    db.upsert_rollout_shard(c, r.id, rs)
                    db.set_desired(c, rs.shard, rs.desired_version)
                r.state, r.reason, r.message = RolloutState.ABORTING, RolloutReason.REVERTED_TO_BASE, f"RevertToBase by {call_principal()}"
                r.etag, r.updated = new_etag(), time.time()
                db.update_rollout(c, r)
                aborted.append(r.id)
            for n in names:
                db.set_desired(c, n, None)
                releases.record(db, c, n, None, "revert", call_principal(), before=stable[n])
        results = self.cp.reconciler.switch_now(dict.fromkeys(names), _deadline(context))
        return rollout_pb2.RevertToBaseResponse(
            results=[rollout_pb2.ShardResult(**r) for r in results], aborted_rollouts=aborted,
            seconds=time.perf_counter() - t0,
        )

    def Rollback(self, request, context):
        db = self.cp.db
        known = {s.name for s in db.shards()}
        names = sorted(set(request.shards)) or sorted(known)
        for n in names:
            if n not in known:
                raise not_found("SHARD_NOT_FOUND", f"no shard named {n!r}", shard=n)
        if not names:
            raise precondition("NO_SHARDS", "no shards are registered")
        if request.to_version:
            check_digest(request.to_version, "to_version")
        t0 = time.perf_counter()
        try:
            plan = releases.rollback_plan(db, names, request.to_version)
        except releases.RollbackRefused as e:
            raise precondition(e.reason, e.message, shard=e.shard) from None
        principal = call_principal()
        aborted = []
        with db.tx() as c:
            # An unfinished rollout on a chosen shard is over: its other shards go back too.
            for r in db.rollouts(active_only=True):
                if not set(plan) & {rs.shard for rs in r.shards}:
                    continue
                for rs in r.shards:
                    rs.desired_version = plan[rs.shard].to if rs.shard in plan else rs.previous_version
                    db.upsert_rollout_shard(c, r.id, rs)
                    db.set_desired(c, rs.shard, rs.desired_version)
                if r.state not in (RolloutState.ROLLING_BACK, RolloutState.ABORTING):
                    r.state, r.reason, r.message = RolloutState.ABORTING, RolloutReason.ROLLED_BACK, f"Rollback by {principal}"
                    r.etag, r.updated = new_etag(), time.time()
                    db.update_rollout(c, r)
                aborted.append(r.id)
            for n, move in plan.items():
                db.set_desired(c, n, move.to)
                releases.record(db, c, n, move.to, "rollback", principal, before=move.left)
        results = self.cp.reconciler.switch_now({n: m.to for n, m in plan.items()}, _deadline(context))
        return rollout_pb2.RollbackResponse(
            results=[rollout_pb2.ShardResult(**r, version=plan[r["shard"]].to or "", previous_version=plan[r["shard"]].left or "")
                     for r in results],
            aborted_rollouts=aborted, seconds=time.perf_counter() - t0,
        )

    def ListReleases(self, request, context):
        if request.page_size < 0:
            raise invalid("BAD_PAGE_SIZE", "page_size must not be negative", field="page_size")
        db = self.cp.db
        names = [request.shard] if request.shard else [s.name for s in db.shards()]
        if request.shard and db.shard(request.shard) is None:
            raise not_found("SHARD_NOT_FOUND", f"no shard named {request.shard!r}", shard=request.shard)
        out = rollout_pb2.ListReleasesResponse()
        for n in names:
            for rel in db.releases(n, min(request.page_size or releases.HISTORY, releases.HISTORY)):
                m = out.releases.add(shard=rel.shard, version=rel.version or "", source=rel.source, principal=rel.principal)
                m.time.FromNanoseconds(int(rel.time * 1e9))
        return out


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return time.time() + remaining if remaining is not None else None
