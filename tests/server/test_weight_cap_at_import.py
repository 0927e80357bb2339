"""`factpatch serve --max-weight-change`: a patch that changes a weight by more than the deployment's
cap is refused at import, naming the tensor, when a --base-dir holds its base; nothing is stored."""

from __future__ import annotations

import grpc
import pytest

from factpatch.server.api.errors import reason_of
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.v1 import patch_pb2
from tests.factories import random_patch, random_patch_on

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, write_tokens


@pytest.fixture
def capped(tmp_path, fixture_dir):
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, base_dirs=[fixture_dir], max_weight_change=0.05))
    srv.start()
    cl = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    yield srv, cl
    cl.close()
    srv.stop(0)


def test_over_the_cap_is_refused_at_import(capped, fixture_dir):
    srv, cl = capped
    small, _ = random_patch_on(fixture_dir, {2: 0.01})
    assert cl.push(small).digest
    big, _ = random_patch_on(fixture_dir, {2: 0.01, 3: 0.2}, seed=1)  # layer 3's weight moves by 20 % of its norm
    with pytest.raises(grpc.RpcError) as ei:
        cl.push(big)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(ei.value) == "WEIGHT_CHANGE_TOO_LARGE"
    assert "model.layers.3.mlp.down_proj.weight" in ei.value.details() and "0.2" in ei.value.details()
    assert len(cl(cl.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches) == 1  # nothing stored
    assert len(srv.cp.store.digests()) == 1


def test_a_base_not_held_locally_is_left_to_the_shards(capped):
    _, cl = capped
    # claims a base no --base-dir holds: the control plane cannot measure it, each shard's own cap will
    assert cl.push(random_patch({"model.layers.3.mlp.down_proj.weight": (256, 1024)}, "sha256:" + "e" * 64,
                                scale=10.0)).digest
