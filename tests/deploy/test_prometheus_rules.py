"""The alert rules: promtool's syntax check, its unit tests, and metric names the code exports."""

from __future__ import annotations

import re
import subprocess

import yaml

from .conftest import DEPLOY, RULES, exported_metric_names

METRIC = re.compile(r"\b(factpatch_[a-z0-9_]+)")


def test_rules_pass_promtool_check(promtool):
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_unit_tests(promtool):
    r = subprocess.run([promtool, "test", "rules", str(DEPLOY / "prometheus" / "tests" / "factpatch.rules.test.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_rules_use_only_exported_metrics():
    exported = exported_metric_names()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    used = {name for g in groups for rule in g["rules"] for name in METRIC.findall(rule["expr"])}
    assert used, "no factpatch metric referenced"
    assert used <= exported, f"rules use metrics the code never exports: {sorted(used - exported)}"


RUNBOOK_BASE = "https://github.com/factpatch/factpatch/blob/main/docs/operator-guide.md"


def test_every_alert_has_severity_summary_and_runbook():
    guide = (DEPLOY.parent / "docs" / "operator-guide.md").read_text().lower()
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert {"FactpatchStaleValueRateHigh", "FactpatchCanaryErrorRateHigh", "FactpatchShardNotAtDesiredVersion",
            "FactpatchRevertHappened"} <= {a["alert"] for a in alerts}
    for a in alerts:
        assert a["labels"]["severity"] in ("info", "warning", "critical"), a["alert"]
        assert a["annotations"]["summary"], a["alert"]
        url = a["annotations"]["runbook_url"]
        # absolute (Alertmanager and Grafana link it as is), into the operator guide this repository ships
        assert url.startswith(RUNBOOK_BASE + "#"), url
        anchor = url.split("#", 1)[1]
        assert anchor == a["alert"].lower()
        # The runbook section the alert links to exists.
        assert f"### {a['alert'].lower()}" in guide, f"no runbook section for {a['alert']}"
