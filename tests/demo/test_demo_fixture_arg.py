"""`factpatch demo --fixture DIR` runs on another build of the fixture; a folder that is not one is refused
before anything starts."""

from __future__ import annotations

import subprocess
import sys


def test_a_folder_that_is_no_fixture_build_is_refused_by_name(tmp_path):
    empty = tmp_path / "not-a-build"
    empty.mkdir()
    (empty / "config.json").write_text("{}")  # a model folder, but no world, report or weights
    proc = subprocess.run(
        [sys.executable, "-c", "from factpatch.cli import main; main()", "demo", "--fast", "--fixture", str(empty),
         "--report", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=300,
    )
    text = " ".join((proc.stdout + proc.stderr).split())  # the console wraps long lines
    assert proc.returncode == 1, text[-3000:]
    assert f"--fixture {empty}: not a complete fixture build" in text, text[-3000:]
    assert sorted(p.name for p in empty.iterdir()) == ["config.json"]  # nothing written into it
