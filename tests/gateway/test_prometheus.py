"""A real Prometheus (Debian's package, installed by `make tools`) scrapes the fleet: the stale-value rate
per version, asked over Prometheus's HTTP API, is lower on the canary than on base; and every query the
dashboard and the alert rules use finds the metrics and labels it names, so a renamed metric or label
fails here, not on a pager."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml

from factpatch.core.version_label import version_label

pytestmark = pytest.mark.vllm

STALE_RATE = ('sum by (version) (rate(factpatch_monitor_matches_total{monitor=~"stale:.*"}[1m]))'
              ' / sum by (version) (rate(factpatch_monitor_evaluated_total{monitor=~"stale:.*"}[1m]))')


def query(url: str, promql: str) -> dict[str, float]:
    r = httpx.get(url + "/api/v1/query", params={"query": promql}, timeout=10).json()
    assert r["status"] == "success", r
    return {s["metric"].get("version", ""): float(s["value"][1]) for s in r["data"]["result"]}


def test_prometheus_sees_canary_stale_rate_below_base(stack, fix_patch, fact, prometheus):
    prom = prometheus(f"127.0.0.1:{stack.srv.gateway.port}")
    digest = stack.cl.push(fix_patch).digest
    patch = version_label(digest)  # the label of its series
    r = stack.start(digest, canary_shards=["s0"], canary_traffic_percent=50)
    r = stack.wait_state(r.id, {"PAUSED"})
    stack.wait_split(r.id, ("s0",))

    rates: dict[str, float] = {}
    with stack.traffic(fact.prompts) as counts:
        deadline = time.monotonic() + 120
        # both series, each with traffic between two scrapes (0/0 reads NaN when one version got none yet)
        while not (patch in rates and "base" in rates and not any(math.isnan(x) for x in rates.values())):
            assert time.monotonic() < deadline, f"no stale rate for both versions in Prometheus: {rates}, {counts}"
            time.sleep(1)
            rates = query(prom, STALE_RATE)
    assert rates[patch] < rates["base"], rates
    assert rates[patch] == 0 and rates["base"] > 0.9
    # the fleet's state is there too
    assert query(prom, "factpatch_shard_active_version")[patch] == 1
    up = httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [t["health"] for t in up] == ["up"]


# --- every dashboard query and rule expression against the live fleet --------------------------------

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "factpatch.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "factpatch.json"
TARGET_LABELS = {"namespace": "fp-test", "release": "fp", "model": "fixture"}  # what the chart's scrape adds
DASHBOARD_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$namespace": ".*", "$release": ".*",
                  "$version": ".*", "$shard": ".*"}
SELECTOR = re.compile(r'((?:factpatch[_:]|vllm:)[A-Za-z0-9_:]+)(\{([^}]*)\})?')
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
GROUPING = re.compile(r'\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)')


def _expressions() -> dict[str, str]:
    out = {}
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in g["rules"]:
            out[f"rule {rule.get('record') or rule.get('alert')}"] = rule["expr"]
    d = json.loads(DASHBOARD.read_text())
    queries = [(f"panel {p['id']} {p.get('title', '')}", t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in d["annotations"]["list"] if a.get("expr")]
    queries += [(f"variable {v['name']}", v["definition"].removeprefix("label_values(").rsplit(",", 1)[0])
                for v in d["templating"]["list"] if v["type"] == "query"]
    for i, (name, q) in enumerate(queries):
        for var, value in DASHBOARD_VARS.items():
            q = q.replace(var, value)
        out[f"{name} #{i}"] = q
    return out


def _series(prom: str, name: str, since: float) -> list[dict]:
    r = httpx.get(prom + "/api/v1/series", params={"match[]": f'{{__name__="{name}"}}', "start": since}, timeout=10).json()
    assert r["status"] == "success", r
    return r["data"]


def _probes_file(tmp_path, world) -> Path:
    from .test_probes import regression_set

    f = tmp_path / "probes.yaml"
    f.write_text(yaml.safe_dump({
        "schedule": {"interval_seconds": 0, "sample_size": 16, "concurrency": 2, "max_busy_share": 0.5},
        "min_interval_seconds": 1,
        # a retrain is due from the first edit: the condition series exists for the queries to find
        "thresholds": {"min_probe_efficacy": 0.0, "max_regression_drift": 1.0, "max_cumulative_edits": 1,
                       "max_relative_weight_change": 100.0},
        "regression": regression_set(world, 8),
    }))
    return f


def test_every_dashboard_and_rule_query_finds_its_metrics_and_labels(tmp_path, shards, fixture_dir, world,
                                                                     fact, prometheus):
    from factpatch.v1 import probe_pb2, rollout_pb2
    from tests.server.helpers import rid

    from .conftest import open_stack

    with open_stack(tmp_path, shards, fixture_dir, probes_file=_probes_file(tmp_path, world),
                    base_dirs=[fixture_dir]) as st:
        gateway = f"127.0.0.1:{st.srv.gateway.port}"
        engines = [s.url.removeprefix("http://") for s in shards.values()]
        prom = prometheus(config={
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "factpatch", "static_configs": [{"targets": [gateway], "labels": TARGET_LABELS}]},
                {"job_name": "factpatch-shards", "static_configs": [{"targets": engines, "labels": TARGET_LABELS}]},
            ]})
        from .patches import push_token_patch

        since = time.time() - 5
        digest = st.cl.push(push_token_patch(fixture_dir, fact, paraphrases=True)).digest
        r = st.start(digest, canary_shards=["s0"], canary_traffic_percent=50)
        st.wait_state(r.id, {"PAUSED"})
        st.wait_split(r.id, ("s0",))
        with st.traffic(fact.prompts) as counts:
            deadline = time.monotonic() + 120
            while not (len(query(prom, "factpatch:stale_value_ratio:rate5m")) == 2
                       and query(prom, "sum(vllm:num_requests_running)")):
                assert time.monotonic() < deadline, f"no stale ratio for both versions yet: {counts}"
                time.sleep(1)
            with st.http.stream("POST", "/v1/completions", json={"model": st.model, "prompt": fact.prompts[0],
                                                                 "max_tokens": 8, "stream": True}) as resp:
                assert resp.status_code == 200 and list(resp.iter_lines())  # streams time their first token
        st.cl(st.cl.probes.RunProbes, probe_pb2.RunProbesRequest())
        st.cl(st.cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
        time.sleep(4)  # a few scrapes and rule evaluations after the last change

        # every rule loaded and evaluates without error (a many-to-many join would fail here)
        groups = httpx.get(prom + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
        assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []

        problems = []
        seen: dict[str, list[dict]] = {}
        for where, expr in _expressions().items():
            res = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
            if res["status"] != "success":
                problems.append(f"{where}: {res.get('error')}")
                continue
            labels_here: set[str] = set()
            for m in SELECTOR.finditer(expr):
                name = m.group(1)
                if name not in seen:
                    seen[name] = _series(prom, name, since)
                found = seen[name]
                if not found:
                    problems.append(f"{where}: no series named {name}")
                    continue
                names = set().union(*(s.keys() for s in found))
                labels_here |= names
                for label in MATCHER.findall(m.group(3) or ""):
                    if label not in names:
                        problems.append(f"{where}: {name} has no label {label!r} (has {sorted(names)})")
            for group in GROUPING.findall(expr):
                for label in filter(None, (x.strip() for x in group.split(","))):
                    if label not in labels_here:
                        problems.append(f"{where}: groups by {label!r}, which none of its series carry")
        assert not problems, "\n".join(problems)
        assert len(seen) >= 25  # the check covered the metrics, not a few of them


# --- analysis gates answered by this Prometheus -----------------------------------------------------

STALE_GATE_QUERY = (
    'sum(rate(factpatch_monitor_matches_total{monitor=~"stale:.*", version=~"$version", shard=~"$shards"}[$window]))'
    ' / sum(rate(factpatch_monitor_evaluated_total{monitor=~"stale:.*", version=~"$version", shard=~"$shards"}[$window]))')


@pytest.fixture
def prometheus_stack(tmp_path, shards, fixture_dir, prometheus):
    """A control plane whose analysis asks a real Prometheus, which scrapes its gateway."""
    from factpatch.harness.shard_process import free_port

    from .conftest import open_stack

    port = free_port()
    prom = prometheus(f"127.0.0.1:{port}")  # scrapes the gateway as soon as it listens
    with open_stack(tmp_path, shards, fixture_dir, gateway_port=port, prometheus_url=prom) as st:
        yield st


@pytest.mark.parametrize("which, outcome", [("weak", "FAILED"), ("fix", "SUCCEEDED")])
def test_prometheus_gate_decides_the_rollout(prometheus_stack, shards, weak_patch, fix_patch, fact, which, outcome):
    """The same stale-rate comparison as the built-in gate, asked as PromQL: a patch that leaves the
    old answer fails and is rolled back by the rollout; one that fixes it is promoted."""
    from factpatch.v1 import rollout_pb2

    st = prometheus_stack
    digest = st.cl.push(weak_patch if which == "weak" else fix_patch).digest
    r = st.start(digest, canary_shards=["s0"], canary_traffic_percent=50, analysis_seconds=20, gates=[
        rollout_pb2.AnalysisGate(metric="prometheus", query=STALE_GATE_QUERY, max_ratio=0.5)])
    r = st.wait_state(r.id, {"ANALYZING"})
    with st.traffic(fact.prompts):
        r = st.wait_state(r.id, {"FAILED", "SUCCEEDED", "PAUSED"})
    assert rollout_pb2.RolloutState.Name(r.state) == f"ROLLOUT_STATE_{outcome}", (r.reason, r.message, r.analysis)
    gate = r.analysis[0].gates[0]
    assert gate.gate.query == STALE_GATE_QUERY and gate.base_value > 0.9  # base still answers the old value
    if which == "weak":
        assert r.reason == "ANALYSIS_FAILED" and gate.canary_value > 0.5 * gate.base_value
        assert shards["s0"].status().json()["active_version"] is None  # rolled back by the rollout itself
    else:
        assert gate.canary_value == 0
        assert shards["s0"].status().json()["active_version"] == digest
