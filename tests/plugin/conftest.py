"""One real shard per test session for the plugin tests (each start costs 20–60 s here)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shard(fixture_dir):
    from factpatch.plugin.testing import ShardServer

    with ShardServer(fixture_dir) as s:
        yield s


@pytest.fixture()
def clean_shard(shard):
    """The shared shard, at base before and after the test."""
    assert shard.revert().status_code == 200
    yield shard
    shard.revert()
