"""Signed patches: OpenSSF model-signing key signatures over patch bytes, and the policy that accepts or
refuses them (core/signing.py), with real keys and files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from factpatch.core.reasons import Refusal
from factpatch.core.signing import SignatureError, TrustedKeys, check_policy, generate_key, shard_policy, sign
from tests.factories import random_patch


@pytest.fixture
def keys(tmp_path):
    made = {}
    for name in ("release", "other"):
        kid = generate_key(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
        made[name] = (tmp_path / f"{name}.key", tmp_path / f"{name}.pub", kid)
    return made


@pytest.fixture
def patch_file(tmp_path):
    p = tmp_path / "refund.fpatch"
    p.write_bytes(random_patch({"model.layers.0.mlp.down_proj.weight": (8, 16)}, "sha256:" + "0" * 64))
    return p


def test_a_signature_holds_for_its_bytes_and_its_key_only(keys, patch_file):
    key, pub, kid = keys["release"]
    sig = sign(patch_file, key)
    assert sig.name == "refund.fpatch.sig" and (key.stat().st_mode & 0o777) == 0o600
    trusted = TrustedKeys.load([pub])
    data, signature = patch_file.read_bytes(), sig.read_bytes()
    assert trusted.verify(data, signature) == kid
    assert json.loads(signature)["verificationMaterial"]["publicKey"]["hint"] == kid  # a model-signing bundle

    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01  # one bit: still a well-formed file to the reader, not the signed bytes
    with pytest.raises(SignatureError) as e:
        trusted.verify(bytes(flipped), signature)
    assert e.value.reason == Refusal.SIGNATURE_INVALID
    with pytest.raises(SignatureError) as e:  # a key the deployment does not trust
        TrustedKeys.load([keys["other"][1]]).verify(data, signature)
    assert e.value.reason == Refusal.SIGNATURE_UNTRUSTED
    for junk in (b"not json", b"{}", b"[1]"):
        with pytest.raises(SignatureError) as e:
            trusted.verify(data, junk)
        assert e.value.reason == Refusal.SIGNATURE_INVALID
    # a key folder trusts every key in it
    folder = pub.parent / "keys"
    folder.mkdir()
    for name in ("release", "other"):
        (folder / f"{name}.pub").write_bytes(keys[name][1].read_bytes())
    assert set(TrustedKeys.load([folder]).keys) == {kid, keys["other"][2]}


def test_the_policy_refuses_what_a_deployment_does_not_accept(keys, patch_file, tmp_path):
    key, pub, kid = keys["release"]
    data, signature = patch_file.read_bytes(), sign(patch_file, key).read_bytes()
    trusted, none = TrustedKeys.load([pub]), TrustedKeys([])
    assert check_policy(trusted, True, data, signature) == kid
    assert check_policy(trusted, False, data, None) is None  # not required: unsigned passes
    assert check_policy(none, False, data, signature) is None  # nothing to check against here
    with pytest.raises(SignatureError) as e:
        check_policy(trusted, True, data, None)
    assert e.value.reason == Refusal.SIGNATURE_REQUIRED
    with pytest.raises(SignatureError) as e:  # given, so it must hold even where not required
        check_policy(trusted, False, data[:-1] + b"x", signature)
    assert e.value.reason == Refusal.SIGNATURE_INVALID
    # a shard's environment
    keys_dir = tmp_path / "trusted"
    keys_dir.mkdir()
    (keys_dir / "release.pub").write_bytes(pub.read_bytes())
    got, required = shard_policy({"FACTPATCH_TRUSTED_KEYS": str(keys_dir), "FACTPATCH_REQUIRE_SIGNATURES": "1"})
    assert required and set(got.keys) == {kid}
    with pytest.raises(ValueError, match="names no public key"):
        shard_policy({"FACTPATCH_REQUIRE_SIGNATURES": "1"})
    with pytest.raises(ValueError, match="not a PEM public key"):
        shard_policy({"FACTPATCH_TRUSTED_KEYS": str(key)})  # the private key given by mistake


def test_patch_sign_and_verify_commands(keys, patch_file, tmp_path):
    key, pub, kid = keys["release"]
    cli = [sys.executable, "-c", "from factpatch.cli import main; main()"]

    def run(*args):
        return subprocess.run([*cli, *args], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})

    assert run("patch", "sign", str(patch_file), "--key", str(key)).returncode == 0
    ok = run("patch", "verify", str(patch_file), "--key", str(pub))
    assert ok.returncode == 0 and kid in ok.stdout.replace("\n", "")
    bad = run("patch", "verify", str(patch_file), "--key", str(keys["other"][1]))
    assert bad.returncode == 3 and "SIGNATURE_UNTRUSTED" in bad.stderr
    not_a_patch = tmp_path / "notes.txt"
    not_a_patch.write_text("hello")
    refused = run("patch", "sign", str(not_a_patch), "--key", str(key))
    assert refused.returncode == 2 and "not a patch file" in refused.stderr
    assert not (tmp_path / "notes.txt.sig").exists()
    again = run("patch", "keygen", "--out", str(tmp_path / "release"))
    assert again.returncode == 2 and "never overwritten" in again.stderr
