"""Deployment artefacts are checked with the real tools that scripts/install-tools.sh installs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "factpatch"
RULES = DEPLOY / "prometheus" / "factpatch.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "factpatch.json"

_loader = importlib.machinery.SourceFileLoader("helm_template", str(ROOT / "scripts" / "helm-template"))
_spec = importlib.util.spec_from_loader("helm_template", _loader)
helm_template = importlib.util.module_from_spec(_spec)
_loader.exec_module(helm_template)


def tool(name: str) -> str:
    path = shutil.which(name)
    # Not a skip: `make test` installs it (scripts/install-tools.sh), so a missing tool is a broken set-up.
    assert path, f"{name} not found: run scripts/install-tools.sh"
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool")


def exported_metric_names() -> set[str]:
    """Every sample name the control plane's /metrics can carry, read from a real registry."""
    import tempfile

    from factpatch.server.control.basecheck import BaseChecker
    from factpatch.server.metrics import Metrics
    from factpatch.server.probes.config import parse
    from factpatch.server.probes.metrics import ProbeMetrics
    from factpatch.server.probes.runner import Prober
    from factpatch.server.probes.weight_change import PatchSizes
    from factpatch.server.state.db import Database

    m = Metrics()
    m.sources(shards=lambda: [], rollouts=lambda: [], monitor_count=lambda: 0, versions=lambda: ["sha256:" + "ab" * 32],
              client_tokens=lambda: (True, 3))
    with tempfile.TemporaryDirectory() as state:
        db = Database(Path(state) / "state.db")
        probes = ProbeMetrics(m.registry)
        probes.attach(Prober(db, parse({"regression": [{"prompt": "Oslo is a city in", "expect": "Norway"}]}),
                             PatchSizes(None, BaseChecker()), agent=lambda name, address: None))
        families = list(m.registry.collect())
        db.close()
    names: set[str] = set()
    for fam in families:
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + s for s in ("_bucket", "_count", "_sum"))
        else:
            names.add(fam.name)
    return names
