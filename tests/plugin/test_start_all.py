"""`start_all`: several shards side by side, all up or none left running."""

from __future__ import annotations

import pytest

from factpatch.harness.shard_process import ShardError, ShardServer, start_all

pytestmark = pytest.mark.vllm


def test_a_shard_that_cannot_start_stops_the_others(fixture_dir, tmp_path):
    """A folder that is no model fails at once; the good shard's start, still under way, is cancelled
    rather than waited out, and its process is gone when start_all raises the failure."""
    empty = tmp_path / "no-model"
    empty.mkdir()
    good, bad = ShardServer(fixture_dir), ShardServer(empty)
    with pytest.raises(ShardError, match="no config.json"):
        start_all([good, bad])
    for shard in (good, bad):
        assert shard.proc is not None, "each start was begun"
        assert shard.proc.poll() is not None, "a process outlived start_all's failure"
