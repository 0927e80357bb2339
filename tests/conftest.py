"""Shared test fixtures: the fixture fact model (built once, cached by recipe), its world, and one real
shard for the whole session (each vLLM engine start costs 20–60 s here)."""

from __future__ import annotations

import pytest

from factpatch.fixture.build import ensure_fixture, load_world


@pytest.fixture(scope="session")
def fixture_dir():
    return ensure_fixture()


@pytest.fixture(scope="session")
def world(fixture_dir):
    return load_world(fixture_dir)


# A short drain timeout lets one plugin test reach the "abort the stragglers" policy in seconds.
SHARD_DRAIN_TIMEOUT_S = 1.0


@pytest.fixture(scope="session")
def shard(fixture_dir):
    from factpatch.plugin.testing import ShardServer

    with ShardServer(fixture_dir, env={"FACTPATCH_DRAIN_TIMEOUT_S": str(SHARD_DRAIN_TIMEOUT_S)}) as s:
        yield s
