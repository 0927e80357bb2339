"""One real shard per test session for the plugin tests (each start costs 20–60 s here)."""

from __future__ import annotations

import pytest

DRAIN_TIMEOUT_S = 1.0


@pytest.fixture(scope="session")
def shard(fixture_dir):
    from factpatch.plugin.testing import ShardServer

    # A short drain timeout lets one test reach the "abort the stragglers" policy in seconds.
    with ShardServer(fixture_dir, env={"FACTPATCH_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S)}) as s:
        yield s


@pytest.fixture()
def clean_shard(shard):
    """The shared shard, at base before and after the test."""
    assert shard.revert().status_code == 200
    yield shard
    shard.revert()
