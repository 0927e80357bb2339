"""How far a stored patch moves each weight, against a local copy of the base (`--base-dir`): the
figure the retrain-due condition reads."""

from __future__ import annotations

import pytest

from factpatch.core.checkpoint import Checkpoint
from factpatch.server.control.basecheck import BaseChecker
from factpatch.server.probes.weight_change import PatchSizes
from factpatch.server.state.store import PatchStore
from tests.factories import random_patch_on


def test_relative_change_is_read_against_the_local_base(tmp_path, fixture_dir):
    store = PatchStore(tmp_path / "patches")
    data, patch = random_patch_on(fixture_dir, {2: 0.1, 3: 0.3}, seed=2)
    digest = store.put(data)
    base = Checkpoint(fixture_dir).fingerprint()
    sizes = PatchSizes(store, BaseChecker([fixture_dir]))
    size = sizes.get(digest, patch.manifest, base)
    assert size.tensors == 2
    assert size.relative_max == pytest.approx(0.3, rel=1e-4)
    assert size.relative_mean == pytest.approx(0.2, rel=1e-4)
    # a shard whose base has no local copy: the edit count only
    unknown = sizes.get(digest, patch.manifest, "sha256:" + "1" * 64)
    assert unknown.relative_max is None and unknown.tensors == 0
