"""The checks a patch passes before any rank writes, against the fixture's real checkpoint: the cap on
how far one tensor may move."""

from __future__ import annotations

import pytest

from factpatch.core.checkpoint import Checkpoint
from factpatch.core.patchfile import relative_change
from factpatch.plugin.checks import CheckError, check_patch
from tests.factories import random_patch_on


def test_a_change_over_the_cap_is_refused_naming_tensor_and_ratio(fixture_dir):
    data, patch = random_patch_on(fixture_dir, {2: 0.2, 3: 1.5}, seed=4)
    ckpt = Checkpoint(fixture_dir)
    ratios = {n: relative_change(ckpt.linear_weight(n), *patch.factors[n]) for n in patch.names}
    assert ratios["model.layers.2.mlp.down_proj.weight"] == pytest.approx(0.2, rel=1e-4)
    with pytest.raises(CheckError) as e:
        check_patch(data, ckpt, expected_digest=None, max_rank=16, max_change=1.0)
    assert e.value.reason == "WEIGHT_CHANGE_TOO_LARGE"
    assert "model.layers.3.mlp.down_proj.weight" in str(e.value) and "1.5" in str(e.value)
    # under the cap, or with no cap, it passes
    check_patch(data, ckpt, expected_digest=None, max_rank=16, max_change=2.0)
    check_patch(data, ckpt, expected_digest=None, max_rank=16, max_change=None)
