"""The reliability figures: one JSON object, one top-level section per part of the reliability work
(hostile input, access matrix, faults, load, ...).

Tests write them to build/reliability.json (not tracked), so a test run never changes a committed
file; `make reliability` runs those tests with $FACTPATCH_RELIABILITY_RESULTS pointing at
bench/results/reliability.json, the figures the README quotes.

Each writer merges only its own section (and, within it, only the keys it brings), so parts run
separately or together leave each other's figures in place.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "bench" / "results" / "reliability.json"


def results_path() -> Path:
    return Path(os.environ.get("FACTPATCH_RELIABILITY_RESULTS") or ROOT / "build" / "reliability.json")


def merge_section(section: str, data: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Merges `data` into `section` (key by key, one level deep) and returns the whole file."""
    path = path or results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # a lock file beside the results: two test runs finishing at once must not drop a section
    with open(Path(tempfile.gettempdir()) / "factpatch-reliability-json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            doc = {}
        current = doc.get(section)
        doc[section] = {**current, **data} if isinstance(current, dict) else dict(data)
        doc[section]["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    return doc
