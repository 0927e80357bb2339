"""`factpatch demo --fast`: the whole story on real processes, and the outcomes it must reach."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from factpatch.demo.story import PROMOTED_MAX_STALE

pytestmark = pytest.mark.vllm


def test_demo_fast_mode_end_to_end(tmp_path, fixture_dir):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-c", "from factpatch.cli import main; main()", "demo", "--fast", "--report", str(out)],
        capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    stages = {s["stage"]: s for s in results["stages"]}
    assert list(stages) == ["fixture", "fleet", "baseline", "edit", "canary", "promote", "revert"]
    # before the change the model gives the old policy values
    assert stages["baseline"]["stale_base"] >= 0.8
    # the patch passed its gates and the canary's stale rate fell below base's
    assert results["edit_eval"]["passed"]
    assert stages["canary"]["stale_canary"] < stages["canary"]["stale_base"]
    assert 0.05 < stages["canary"]["canary_share"] < 0.6
    # promoted everywhere, then reverted: the exact base answers are back
    assert stages["promote"]["stale"] <= PROMOTED_MAX_STALE < stages["baseline"]["stale_base"] / 4
    done, total = map(int, stages["revert"]["identical"].split("/"))
    assert total > 0 and done == total
    assert stages["revert"]["stale"] >= 0.8
    for name in ("summary.md", "stale_rate.png", "edit_quality.png", "samples.jsonl", "policy-update.fpatch"):
        assert (out / name).stat().st_size > 0, name
