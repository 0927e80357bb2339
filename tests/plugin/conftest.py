"""The plugin tests use the session's shard (tests/conftest.py), at base around each test."""

from __future__ import annotations

import pytest


@pytest.fixture()
def clean_shard(shard):
    """The shared shard, at base before and after the test."""
    assert shard.revert().status_code == 200
    yield shard
    shard.revert()
