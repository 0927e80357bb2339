"""systemd units: systemd's own verifier and its offline security score, and the flags they pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.helpers import AGENT_TOKEN

from .conftest import DEPLOY, tool

UNITS = DEPLOY / "systemd"
FACTPATCH = str(Path(sys.executable).parent / "factpatch")


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    """The units with ExecStart pointing at this checkout's command (verify checks it exists)."""
    d = tmp_path_factory.mktemp("units")
    for f in UNITS.glob("factpatch*"):
        (d / f.name).write_text(f.read_text().replace("/opt/factpatch/venv/bin/factpatch", FACTPATCH))
    (d / "factpatch-shard@s0.service").write_text((d / "factpatch-shard@.service").read_text())
    return d


def test_units_verify_cleanly(units):
    r = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", "factpatch-control-plane.service",
                        "factpatch-shard@s0.service", "factpatch.target"], cwd=units, capture_output=True, text=True,
                       env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    # Unknown keys and bad values are warnings with exit status 0: the output must be empty too.
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


def test_a_typo_is_caught(units, tmp_path):
    bad = tmp_path / "factpatch-bad.service"
    bad.write_text((units / "factpatch-control-plane.service").read_text().replace("Restart=always", "Restrat=always"))
    r = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", bad.name], cwd=tmp_path, capture_output=True, text=True)
    assert "Restrat" in r.stderr


@pytest.mark.parametrize("unit, limit", [("factpatch-control-plane.service", 2.5), ("factpatch-shard@s0.service", 4.0)])
def test_units_are_hardened(units, unit, limit):
    r = subprocess.run([tool("systemd-analyze"), "security", "--offline=true", "--no-pager", unit], cwd=units,
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= limit, r.stdout


def test_units_pass_real_flags_and_token_by_environment():
    shard = (UNITS / "factpatch-shard@.service").read_text()
    cp = (UNITS / "factpatch-control-plane.service").read_text()
    assert "EnvironmentFile=/etc/factpatch/agent-token.env" in shard and "EnvironmentFile=/etc/factpatch/agent-token.env" in cp
    assert "FACTPATCH_AGENT_TOKEN=" in (UNITS / "agent-token.env.example").read_text()
    for unit, sub in ((shard, "shard"), (cp, "serve")):
        exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        help_text = subprocess.run([FACTPATCH, sub, "--help"], capture_output=True, text=True,
                                   env={**os.environ, "COLUMNS": "300", "TERM": "dumb"}).stdout
        for flag in re.findall(r"\s(--[a-z][a-z-]+)", exec_start.split(" -- ")[0]):
            assert flag in help_text, f"`factpatch {sub}` has no {flag}"


def test_shard_command_from_the_unit_starts_vllm_with_the_plugin(tmp_path):
    """What the shard unit runs, with the example settings, in --dry-run: vLLM with both plugins."""
    env = {**os.environ, "FACTPATCH_AGENT_TOKEN": AGENT_TOKEN}
    r = subprocess.run([FACTPATCH, "shard", "--model", str(tmp_path), "--host", "0.0.0.0", "--port", "8000", "--dry-run",
                        "--", "--max-model-len", "4096"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "VLLM_PLUGINS=factpatch,factpatch_agent" in r.stdout
    assert "--worker-extension-cls factpatch.plugin.worker_ext.FactpatchWorkerExtension" in r.stdout
    assert "--max-model-len 4096" in r.stdout
