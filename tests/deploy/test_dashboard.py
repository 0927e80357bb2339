"""The Grafana dashboard parses, its queries are valid PromQL (promtool) over metrics the code exports."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from .conftest import DASHBOARD, exported_metric_names

METRIC = re.compile(r"\b(factpatch_[a-z0-9_]+)")
# Grafana's own variables, replaced by what Grafana would put there.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "3h", "$__interval": "30s"}


def _queries(d: dict) -> list[str]:
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    out += [a["expr"] for a in d["annotations"]["list"] if a.get("expr")]
    return out


def test_dashboard_parses_and_has_the_panels():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] == "factpatch"
    titles = " | ".join(p["title"].lower() for p in d["panels"])
    for want in ("stale-value rate per version", "traffic split", "applies and reverts", "latency"):
        assert want in titles
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # Every query goes to the datasource chosen in the dashboard's variable.
    assert {t["datasource"]["uid"] for p in d["panels"] for t in p.get("targets", [])} == {"${datasource}"}


def _own_vars(d: dict) -> dict[str, str]:
    """The dashboard's query variables (version, shard), as Grafana fills them with "All"."""
    return {"$" + v["name"]: v["allValue"] for v in d["templating"]["list"] if v["type"] == "query"}


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    d = json.loads(DASHBOARD.read_text())
    queries = _queries(d)
    assert len(queries) >= 10
    own = _own_vars(d)
    assert set(own) == {"$namespace", "$release", "$version", "$shard"}
    assert any("$version" in q for q in queries) and any("$shard" in q for q in queries)
    # every query is scoped to the chosen namespace and release: two releases never share a panel line
    # unless both are chosen
    unscoped = [q for q in queries if not ('namespace=~"$namespace"' in q and 'release=~"$release"' in q)]
    assert not unscoped, unscoped
    rules = []
    for i, q in enumerate(queries):
        for var, value in {**GRAFANA_VARS, **own}.items():
            q = q.replace(var, value)
        assert "$" not in q, f"unknown Grafana variable in {q!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": q})
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_uses_only_exported_metrics():
    exported = exported_metric_names()
    d = json.loads(DASHBOARD.read_text())
    used = {m for q in _queries(d) for m in METRIC.findall(q)}
    used |= {m for v in d["templating"]["list"] if v["type"] == "query" for m in METRIC.findall(v["definition"])}
    assert "factpatch_monitor_matches_total" in used and "factpatch_monitor_evaluated_total" in used
    assert used <= exported, f"dashboard uses metrics the code never exports: {sorted(used - exported)}"
