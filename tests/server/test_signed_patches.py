"""A control plane that requires signed patches: ImportPatch on a real gRPC server with real keys."""

from __future__ import annotations

import grpc
import pytest

from factpatch.core.signing import generate_key, sign
from factpatch.server.api.errors import reason_of
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.v1 import patch_pb2

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, random_patch, write_tokens

FP = "sha256:" + "1" * 64


@pytest.fixture
def signing(tmp_path):
    kid = generate_key(tmp_path / "release.key", tmp_path / "release.pub")
    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, reconcile_interval=0.2, trusted_keys=[tmp_path / "release.pub"], require_signatures=True,
    ))
    srv.start()
    c = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    yield c, tmp_path, kid
    c.close()
    srv.stop(0)


def _signed(tmp_path, data: bytes, key: str = "release") -> bytes:
    f = tmp_path / f"p-{key}.fpatch"
    f.write_bytes(data)
    return sign(f, tmp_path / f"{key}.key").read_bytes()


def _refused(c, data, signature, code, reason):
    with pytest.raises(grpc.RpcError) as e:
        c.push(data, signature=signature)
    assert e.value.code() == code and reason_of(e.value) == reason, e.value.details()


def test_only_patches_signed_by_a_trusted_key_are_stored(signing):
    c, tmp_path, kid = signing
    data = random_patch({"model.layers.0.mlp.down_proj.weight": (8, 16)}, FP)
    signature = _signed(tmp_path, data)
    _refused(c, data, None, grpc.StatusCode.FAILED_PRECONDITION, "SIGNATURE_REQUIRED")
    _refused(c, data, _signed(tmp_path, data, "other"), grpc.StatusCode.PERMISSION_DENIED, "SIGNATURE_UNTRUSTED")
    flipped = bytearray(data)
    flipped[-5] ^= 0x01  # a well-formed patch with one bit changed, sent with the original's signature
    _refused(c, bytes(flipped), signature, grpc.StatusCode.PERMISSION_DENIED, "SIGNATURE_INVALID")
    assert not c(c.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches  # nothing refused was stored

    got = c.push(data, signature=signature)
    assert got.signed_by == kid and got.has_signature
    assert c(c.patches.GetPatch, patch_pb2.GetPatchRequest(digest=got.digest)).signed_by == kid


def test_requiring_signatures_without_a_key_refuses_the_start(tmp_path):
    with pytest.raises(ValueError, match="--trusted-key"):
        ControlPlaneServer(ServeConfig(state_dir=tmp_path / "s", listen="127.0.0.1:0",
                                       tokens_file=write_tokens(tmp_path / "t.yaml"), agent_token=AGENT_TOKEN,
                                       require_signatures=True))
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
