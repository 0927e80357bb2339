"""The plugin tests use the session's shard (tests/conftest.py), at base around each test."""

from __future__ import annotations

import pytest

from tests.conftest import SHARD_DRAIN_TIMEOUT_S as DRAIN_TIMEOUT_S  # noqa: F401  (tests import it from here)


@pytest.fixture()
def clean_shard(shard):
    """The shared shard, at base before and after the test."""
    assert shard.revert().status_code == 200
    yield shard
    shard.revert()
