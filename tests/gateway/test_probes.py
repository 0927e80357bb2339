"""Live edit probes on the fixture fleet: a good patch holds on its shard, a bad one raises the
drift condition, probes keep off a swapping shard, and bad probe settings are refused."""

from __future__ import annotations

import grpc
import pytest
import yaml
from typer.testing import CliRunner

from factpatch.core.version_label import version_label
from factpatch.server.api.errors import reason_of
from factpatch.v1 import probe_pb2, probe_pb2_grpc, rollout_pb2
from tests.server.helpers import OPERATOR_TOKEN, rid

from .conftest import Stack, open_stack

pytestmark = pytest.mark.vllm


def regression_set(world, n: int = 30) -> list[dict]:
    """Facts of other subjects, asked with a phrasing they were trained on: the base answers them."""
    out = []
    for f in world.facts:
        if f.subject != "Harbor Support" and len(out) < n and f.relation in ("country", "maker", "employer", "instrument"):
            out.append({"prompt": world.relations[f.relation].templates[f.train_templates[0]].format(f.subject),
                        "expect": f.object})
    return out


@pytest.fixture(scope="module")
def demo_patch(fixture_dir, world) -> bytes:
    """The demo's MEMIT patch (seven of Harbor Support's fifteen policy values changed)."""
    from factpatch.core import patchfile
    from factpatch.demo.scenario import edit_spec
    from factpatch.editor.pipeline import EditOptions, load, run_edit

    loaded = load(fixture_dir)
    return patchfile.to_bytes(run_edit(loaded, edit_spec(world).edits, EditOptions(method="memit")).patch)


@pytest.fixture(scope="module")
def breaking_patch(fixture_dir, fact) -> bytes:
    """Claims one edit but pushes its token on every prompt: unrelated facts break."""
    from .patches import push_token_patch

    return push_token_patch(fixture_dir, fact, strength=400.0)


@pytest.fixture
def probe_stack(request, tmp_path, shards, fixture_dir, world):
    probes = tmp_path / "probes.yaml"
    probes.write_text(yaml.safe_dump({
        "schedule": {"interval_seconds": 0, "sample_size": 64, "concurrency": 2, "max_busy_share": 0.2},
        "min_interval_seconds": 2,
        # MEMIT patches on the fixture are large against the weights they touch (see the editor's
        # tuning notes), so the weight-change threshold here is set above them.
        "thresholds": {"min_probe_efficacy": 0.9, "max_regression_drift": 0.1, "max_cumulative_edits": 100,
                       "max_relative_weight_change": 100.0, **getattr(request, "param", {})},
        "regression": regression_set(world),
    }))
    with open_stack(tmp_path, shards, fixture_dir, probes_file=probes, base_dirs=[fixture_dir]) as st:
        st.probes = st.cl.probes
        yield st


def _canary_on_s0(st: Stack, data: bytes) -> str:
    digest = st.cl.push(data).digest
    r = st.start(digest, canary_shards=["s0"], canary_traffic_percent=25)
    st.wait_state(r.id, {"PAUSED"})
    return digest


def _by_shard(report) -> dict:
    return {r.shard: r for r in report.results}


def test_good_patch_holds_on_its_shard_and_not_on_base(probe_stack, demo_patch, world):
    st = probe_stack
    digest = _canary_on_s0(st, demo_patch)
    from factpatch.demo.scenario import POLICY_CHANGES, edit_spec

    # The held-out phrasings of the demo's policies, as extra paraphrases for this patch.
    edits = []
    for rel in [c.relation for c in POLICY_CHANGES]:
        edits.append(probe_pb2.EditParaphrases(subject="Harbor Support", relation=rel,
                                               paraphrases=world.heldout_paraphrases("Harbor Support", rel)))
    st.cl(st.probes.SetProbeSet, probe_pb2.SetProbeSetRequest(request_id=rid(), patch=digest, edits=edits))

    requests_before = st.metric("factpatch_gateway_requests_total")
    report = st.cl(st.probes.RunProbes, probe_pb2.RunProbesRequest())
    res = _by_shard(report)
    assert res["s0"].outcome == probe_pb2.PROBE_OUTCOME_OK and res["s0"].version == digest
    spec_edits = edit_spec(world).edits
    assert res["s0"].edit_prompts == len(spec_edits) and res["s0"].efficacy == 1.0
    # probed in the phrasings each edit was written in (the manifest's) and in the held-out ones set above
    n_paraphrases = sum(len({*e.paraphrases, *world.heldout_paraphrases(e.subject, e.relation)}) for e in spec_edits)
    assert res["s0"].paraphrase_prompts == n_paraphrases and res["s0"].paraphrase_success >= 0.75
    assert res["s0"].regression_agreement >= 0.95
    # the base shard is probed on the regression set only, and agrees with itself
    assert res["s1"].version == "" and res["s1"].edit_prompts == 0 and res["s1"].regression_agreement >= 0.95
    assert not report.conditions, report.conditions
    # probes go to the shards directly: the gateway saw none of them
    assert st.metric("factpatch_gateway_requests_total") == requests_before

    # gauges: high on the patched shard; the base shard has no edit series at all
    assert st.metric("factpatch_probe_efficacy_ratio", shard="s0", version=version_label(digest)) == 1.0
    assert st.metric("factpatch_probe_regression_agreement_ratio", shard="s1", version="base") >= 0.95
    assert st.metric("factpatch_probe_runs_total", shard="s0", outcome="ok") == 1
    assert st.metric("factpatch_patch_edits", version=version_label(digest)) == len(spec_edits)
    assert st.metric("factpatch_patch_weight_change_ratio", version=version_label(digest), stat="max") > 0

    # The same prompts asked of the base shard do not give the new values: the edit lives on s0 only.
    from factpatch.server.probes.shard_client import ShardCompletions

    # (each asked in a phrasing the base model was trained on for Harbor Support, so it knows the answer)
    facts = [world.fact("Harbor Support", rel) for rel in ("refund period", "premium response time")]
    c = ShardCompletions(st.srv.cp.db.shard("s1").address)
    try:
        answers = c.complete([world.relations[f.relation].templates[f.train_templates[-1]].format(f.subject)
                              for f in facts], 1)
    finally:
        c.close()
    assert [a.strip() for a in answers] == [f.object for f in facts]

    # release-checklist command: same table, exit 0 while no condition holds
    from factpatch.server.cli.ctl import app

    out = CliRunner().invoke(app, ["--address", f"127.0.0.1:{st.srv.port}", "--token", OPERATOR_TOKEN,
                                   "probe", "run", "--shard", "s0"])
    assert out.exit_code == 0, out.output
    assert "probe results" in out.output and "no conditions in force" in out.output


def test_breaking_patch_raises_regression_drift_and_its_rollout_rolls_back(probe_stack, breaking_patch):
    st = probe_stack
    digest = _canary_on_s0(st, breaking_patch)
    report = st.cl(st.probes.RunProbes, probe_pb2.RunProbesRequest(shards=["s0"]))
    s0 = _by_shard(report)["s0"]
    assert s0.outcome == probe_pb2.PROBE_OUTCOME_OK and s0.regression_agreement < 0.9, s0
    drift = [c for c in report.conditions if c.type == probe_pb2.CONDITION_TYPE_REGRESSION_DRIFT]
    assert [(c.shard, c.version) for c in drift] == [("s0", digest)]
    assert drift[0].value > drift[0].threshold == pytest.approx(0.1)
    assert any(m.kind == "regression" for m in s0.misses)
    assert st.metric("factpatch_probe_condition", condition="regression_drift", shard="s0", version=version_label(digest)) == 1
    # the viewer reads the same conditions without running anything
    from tests.server.helpers import VIEWER_TOKEN

    viewer = probe_pb2_grpc.ProbeServiceStub(grpc.insecure_channel(f"127.0.0.1:{st.srv.port}"))
    got = viewer.GetProbeReport(probe_pb2.GetProbeReportRequest(), metadata=(("authorization", f"Bearer {VIEWER_TOKEN}"),))
    assert probe_pb2.CONDITION_TYPE_REGRESSION_DRIFT in {c.type for c in got.conditions}
    # and the rollout that put it there is rolled back by itself
    r = st.cl(st.cl.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest(page_size=1)).rollouts[0]
    r = st.wait_state(r.id, {"FAILED"})
    assert r.reason == "PROBE_CONDITION" and "REGRESSION_DRIFT on s0" in r.message
    assert next(x for x in r.shards if x.shard == "s0").desired_version == ""  # back on base
    assert len(got.conditions) == len(report.conditions)
    with pytest.raises(grpc.RpcError) as e:
        viewer.RunProbes(probe_pb2.RunProbesRequest(), metadata=(("authorization", f"Bearer {VIEWER_TOKEN}"),))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # back on base, the next run clears it
    st.cl(st.cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
    report = st.cl(st.probes.RunProbes, probe_pb2.RunProbesRequest(shards=["s0"]))
    assert _by_shard(report)["s0"].version == "" and not report.conditions


@pytest.mark.parametrize("probe_stack", [{"max_cumulative_edits": 2}], indirect=True)
def test_retrain_due_when_edits_pile_up(probe_stack, demo_patch, world):
    from factpatch.demo.scenario import edit_spec

    n_edits = len(edit_spec(world).edits)  # at or above the limit of 2
    st = probe_stack
    digest = _canary_on_s0(st, demo_patch)
    st.cl(st.probes.RunProbes, probe_pb2.RunProbesRequest(shards=["s0"]))
    report = st.cl(st.probes.GetProbeReport, probe_pb2.GetProbeReportRequest())
    due = [c for c in report.conditions if c.type == probe_pb2.CONDITION_TYPE_RETRAIN_DUE]
    assert [(c.shard, c.version, c.value, c.threshold) for c in due] == [("s0", digest, float(n_edits), 2.0)]
    assert f"{n_edits} edits" in due[0].message
    assert st.metric("factpatch_probe_condition", condition="retrain_due", shard="s0", version=version_label(digest)) == 1


def test_probes_keep_off_a_swapping_shard_and_respect_the_budget(probe_stack):
    st = probe_stack
    swaps = st.srv.prober.swaps
    swaps.begin("s0")  # what the reconciler marks while it changes a shard's weights
    try:
        report = st.cl(st.probes.RunProbes, probe_pb2.RunProbesRequest())
    finally:
        swaps.end("s0", st.srv.cp.db.generation)
    res = _by_shard(report)
    assert res["s0"].outcome == probe_pb2.PROBE_OUTCOME_SKIPPED_SWAPPING and res["s0"].regression_prompts == 0
    assert res["s1"].outcome == probe_pb2.PROBE_OUTCOME_OK
    assert st.metric("factpatch_probe_runs_total", shard="s0", outcome="skipped_swapping") == 1

    # Scheduled probing: every 2 s, at most 20 % of a shard's time.
    st.cl(st.probes.SetProbeSchedule, probe_pb2.SetProbeScheduleRequest(request_id=rid(), schedule=probe_pb2.ProbeSchedule(
        interval_seconds=2, sample_size=64, concurrency=1, max_busy_share=0.2)))
    import time

    deadline = time.monotonic() + 60
    while st.metric("factpatch_probe_runs_total", shard="s1", outcome="ok") < 3:
        assert time.monotonic() < deadline, "scheduled probes did not run"
        time.sleep(0.5)
    # the new schedule is the one in force, and it is kept in the state database
    from factpatch.server.probes.config import Schedule

    want = Schedule(interval_seconds=2, sample_size=64, concurrency=1, max_busy_share=0.2)
    assert st.srv.prober.schedule == want
    assert st.srv.cp.db.setting("probe_schedule") == want.model_dump()


def test_bad_probe_settings_are_refused(probe_stack, demo_patch):
    st = probe_stack
    digest = st.cl.push(demo_patch).digest
    with pytest.raises(grpc.RpcError) as e:
        st.cl(st.probes.SetProbeSet, probe_pb2.SetProbeSetRequest(request_id=rid(), patch=digest, edits=[
            probe_pb2.EditParaphrases(subject="Oslo", relation="refund period", paraphrases=["{} refunds within"])]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(e.value) == "PROBE_SUBJECT_NOT_IN_PATCH"
    assert "'Oslo'" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        st.cl(st.probes.SetProbeSchedule, probe_pb2.SetProbeScheduleRequest(request_id=rid(), schedule=probe_pb2.ProbeSchedule(
            interval_seconds=0.5, sample_size=8, concurrency=1, max_busy_share=0.1)))
    assert reason_of(e.value) == "PROBE_SCHEDULE_TOO_FAST" and "floor of 2 s" in e.value.details()
    # nothing changed
    got = st.cl(st.probes.GetProbeSet, probe_pb2.GetProbeSetRequest(patch=digest))
    assert list(got.edits) == []
    policy = st.cl(st.probes.GetProbeReport, probe_pb2.GetProbeReportRequest()).policy
    assert policy.schedule == probe_pb2.ProbeSchedule(sample_size=64, concurrency=2, max_busy_share=0.2,
                                                      min_interval_seconds=2)  # as configured: probing on demand only
