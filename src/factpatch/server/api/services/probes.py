"""ProbeService: run probes now, read the latest results and conditions, set probe sets and the schedule."""

from __future__ import annotations

import json

from factpatch.server.api.convert import ts
from factpatch.server.api.errors import invalid, not_found, precondition
from factpatch.server.api.interceptor import call_principal
from factpatch.server.api.services.patches import check_digest
from factpatch.server.probes.config import ProbeConfigError, Schedule, check_schedule
from factpatch.server.probes.runner import Condition, Prober, ProbeResult
from factpatch.server.probes.sets import EDIT, PARAPHRASE, REGRESSION, ProbeSetError, check_extras
from factpatch.v1 import probe_pb2, probe_pb2_grpc

OUTCOMES = {name.removeprefix("PROBE_OUTCOME_"): value for name, value in probe_pb2.ProbeOutcome.items()}
CONDITIONS = {name.removeprefix("CONDITION_TYPE_"): value for name, value in probe_pb2.ConditionType.items()}


def result_pb(r: ProbeResult) -> probe_pb2.ProbeResult:
    return probe_pb2.ProbeResult(
        shard=r.shard, version=r.version or "", outcome=OUTCOMES[r.outcome], detail=r.detail,
        edit_prompts=r.asked[EDIT], edit_hits=r.hits[EDIT], efficacy=r.ratio(EDIT) or 0.0,
        paraphrase_prompts=r.asked[PARAPHRASE], paraphrase_hits=r.hits[PARAPHRASE],
        paraphrase_success=r.ratio(PARAPHRASE) or 0.0,
        regression_prompts=r.asked[REGRESSION], regression_agree=r.hits[REGRESSION],
        regression_agreement=r.ratio(REGRESSION) or 0.0,
        duration_seconds=r.duration, finished=ts(r.finished),
        misses=[probe_pb2.ProbeMiss(kind=k, prompt=p, expected=e, got=g) for k, p, e, g in r.misses],
    )


def condition_pb(c: Condition) -> probe_pb2.Condition:
    return probe_pb2.Condition(type=CONDITIONS[c.type], shard=c.shard, version=c.version or "", value=c.value,
                               threshold=c.threshold, message=c.message, since=ts(c.since))


class ProbeService(probe_pb2_grpc.ProbeServiceServicer):
    def __init__(self, prober: Prober | None):
        self.prober = prober

    def _need(self) -> Prober:
        if self.prober is None:
            raise precondition("PROBES_DISABLED", "probes are off: start the control plane with --probes FILE")
        return self.prober

    def _policy(self, p: Prober) -> probe_pb2.ProbePolicy:
        s, th = p.schedule, p.cfg.thresholds
        return probe_pb2.ProbePolicy(
            schedule=probe_pb2.ProbeSchedule(interval_seconds=s.interval_seconds, sample_size=s.sample_size,
                                             concurrency=s.concurrency, max_busy_share=s.max_busy_share,
                                             min_interval_seconds=p.cfg.min_interval_seconds),
            min_probe_efficacy=th.min_probe_efficacy, max_regression_drift=th.max_regression_drift,
            max_cumulative_edits=th.max_cumulative_edits, max_relative_weight_change=th.max_relative_weight_change,
            regression_prompts=len(p.regression),
        )

    def _report(self, p: Prober, results: list[ProbeResult]) -> probe_pb2.ProbeReport:
        _, conditions = p.snapshot()
        return probe_pb2.ProbeReport(results=[result_pb(r) for r in results],
                                     conditions=[condition_pb(c) for c in conditions], policy=self._policy(p))

    def RunProbes(self, request, context):
        p = self._need()
        known = {s.name for s in p.db.shards()}
        for name in request.shards:
            if name not in known:
                raise not_found("SHARD_NOT_FOUND", f"no shard {name!r}", shard=name)
        return self._report(p, p.run(list(request.shards) or None))

    def GetProbeReport(self, request, context):
        p = self._need()
        results, _ = p.snapshot()
        return self._report(p, sorted(results, key=lambda r: r.shard))

    def SetProbeSet(self, request, context):
        p = self._need()
        row = p.db.patch(check_digest(request.patch, "patch"))
        if row is None:
            raise not_found("PATCH_NOT_FOUND", f"no patch {request.patch} in the store", digest=request.patch)
        extras = [{"subject": e.subject, "relation": e.relation, "paraphrases": list(e.paraphrases)} for e in request.edits]
        try:
            checked = check_extras(json.loads(row["manifest"]), extras)
        except ProbeSetError as e:
            raise invalid(e.reason, e.message, field=e.field) from None
        p.db.set_probe_set(request.patch, checked, call_principal())
        return self.GetProbeSet(probe_pb2.GetProbeSetRequest(patch=request.patch), context)

    def GetProbeSet(self, request, context):
        p = self._need()
        if p.db.patch(check_digest(request.patch, "patch")) is None:
            raise not_found("PATCH_NOT_FOUND", f"no patch {request.patch} in the store", digest=request.patch)
        return probe_pb2.ProbeSet(patch=request.patch, edits=[
            probe_pb2.EditParaphrases(subject=e["subject"], relation=e["relation"], paraphrases=e["paraphrases"])
            for e in p.db.probe_set(request.patch)])

    def SetProbeSchedule(self, request, context):
        p = self._need()
        s = request.schedule
        try:
            checked = check_schedule(Schedule(interval_seconds=s.interval_seconds, sample_size=s.sample_size,
                                              concurrency=s.concurrency, max_busy_share=s.max_busy_share),
                                     p.cfg.min_interval_seconds)
        except ProbeConfigError as e:
            raise invalid(e.reason, e.message, field=e.field) from None
        p.set_schedule(checked)
        return self._policy(p).schedule
