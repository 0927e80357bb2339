"""Fixtures for the reliability tests: hypothesis settings, the tally of inputs tried (written to
bench/results/reliability.json at the end of the session), and the control-plane fixtures of
tests/server, imported rather than copied."""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from tests.server.conftest import anon, control_plane, op, viewer  # noqa: F401  (fixtures)

from .results import merge_section

# hypothesis keeps caches in .hypothesis/ of the working directory; not in the repository
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "factpatch-hypothesis")
# FACTPATCH_FUZZ_EXAMPLES raises (or lowers) every test's example count for long runs.
_OVERRIDE = int(os.environ.get("FACTPATCH_FUZZ_EXAMPLES", "0") or 0)


def fuzz(examples: int) -> settings:
    """Bounded settings: the example count given (or FACTPATCH_FUZZ_EXAMPLES), no deadline (the
    machine is shared), no example database in the repository. Each run draws new inputs, so
    repeated runs widen the search; regressions are pinned with @example."""
    return settings(
        max_examples=_OVERRIDE or examples, deadline=None, database=None, derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class Tally:
    """Inputs tried per target and what became of them; failures keep a short repr of the input."""

    def __init__(self):
        self.tried: Counter[str] = Counter()
        self.outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.failures: defaultdict[str, list[str]] = defaultdict(list)
        self.fixed: dict[str, list[str]] = {}

    def record(self, target: str, outcome: str) -> None:
        self.tried[target] += 1
        self.outcomes[target][outcome] += 1

    def failure(self, target: str, what: str) -> None:
        if len(self.failures[target]) < 20:
            self.failures[target].append(what[:300])

    def section(self) -> dict:
        targets = sorted(set(self.tried) | set(self.fixed))
        return {
            t: {
                "inputs_tried": self.tried[t],
                "outcomes": dict(self.outcomes[t].most_common()),
                "failures_this_run": self.failures[t],
                "found_and_fixed": self.fixed.get(t, []),
            }
            for t in targets
        }


@pytest.fixture(scope="session")
def tally():
    t = Tally()
    yield t
    if t.tried:
        merge_section("hostile_input", {**t.section(), "_settings": {"FACTPATCH_FUZZ_EXAMPLES": _OVERRIDE or None}})



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`factpatch serve` in its own process, one per test module."""
    from . import served as sv

    s = sv.start(tmp_path_factory.mktemp("serve"))
    yield s
    try:  # again here, for runs that select only some of a module's tests
        sv.assert_healthy(s)
        sv.assert_contained(s)
    finally:
        sv.stop(s)
