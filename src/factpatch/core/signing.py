"""Signed patches: a detached OpenSSF model-signing signature (a Sigstore bundle, signed with an
elliptic-curve key, offline) over the patch file's bytes.

    sign(Path("refund.fpatch"), Path("release.key"))           # writes refund.fpatch.sig
    keys = TrustedKeys.load([Path("release.pub")])
    signer = keys.verify(data, signature)                       # SignatureError when it does not hold

The signature is the bundle `model_signing sign key` writes, so `model_signing verify key
--public_key release.pub --signature refund.fpatch.sig refund.fpatch` checks it too. A patch is
identified by its sha256 alone; the signature says who vouched for those bytes. Where a deployment
requires signatures (control plane `--require-signatures`, shard `FACTPATCH_REQUIRE_SIGNATURES`), an
unsigned patch, or one signed by a key that is not trusted there, is refused before it is stored or
applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from factpatch.core.reasons import Refusal

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_HEADER = "X-Factpatch-Signature"  # the agent's apply: base64 of the signature
TRUSTED_KEYS_ENV = "FACTPATCH_TRUSTED_KEYS"  # a shard's trusted public keys: PEM files or folders, ':'-separated
REQUIRE_SIGNATURES_ENV = "FACTPATCH_REQUIRE_SIGNATURES"
MAX_SIGNATURE_BYTES = 64 << 10


class SignatureError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def signature_path(patch_path: Path) -> Path:
    """Where a patch's detached signature sits by default: beside it, `.sig` appended."""
    return patch_path.with_name(patch_path.name + SIGNATURE_SUFFIX)


def key_id(public_pem: bytes) -> str:
    """The key's identity as model-signing writes it into a bundle (sha256 of its PEM public key)."""
    return hashlib.sha256(public_pem).hexdigest()


def _public_pem(private_key_path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_key_path.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key(private_path: Path, public_path: Path) -> str:
    """A new P-256 signing key: the private half written 0600, the public half beside it; its key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never over an existing key
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_path.write_bytes(public)
    return key_id(public)


def sign(patch_path: Path, private_key_path: Path, out: Path | None = None) -> Path:
    """Sign the patch file with an elliptic-curve private key (PEM); returns the signature's path."""
    import model_signing

    out = out or signature_path(patch_path)
    try:
        _public_pem(private_key_path)  # a clear error for a file that is not a private key
    except (ValueError, TypeError) as e:
        raise SignatureError(Refusal.SIGNATURE_INVALID, f"{private_key_path}: not a PEM private key without a password ({e})") from None
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private_key_path).sign(patch_path, out)
    return out


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    key_id: str


class TrustedKeys:
    """The public keys whose signatures a control plane or shard accepts (PEM files, or folders of them)."""

    def __init__(self, keys: list[TrustedKey]):
        self.keys = {k.key_id: k for k in keys}

    @classmethod
    def load(cls, paths: list[Path]) -> "TrustedKeys":
        from cryptography.hazmat.primitives import serialization

        keys = []
        for given in paths:
            files = sorted(p for p in Path(given).iterdir() if p.is_file() and not p.name.startswith(".")) \
                if Path(given).is_dir() else [Path(given)]
            for f in files:
                try:
                    pub = serialization.load_pem_public_key(f.read_bytes())
                except (ValueError, OSError) as e:
                    raise ValueError(f"trusted key {f}: not a PEM public key ({e})") from None
                pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                keys.append(TrustedKey(f, key_id(pem)))
        if paths and not keys:
            raise ValueError(f"no public keys in {', '.join(map(str, paths))}")
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def verify(self, data: bytes, signature: bytes) -> str:
        """The id of the trusted key that signed exactly these bytes; SignatureError otherwise."""
        import model_signing

        if len(signature) > MAX_SIGNATURE_BYTES:
            raise SignatureError(Refusal.SIGNATURE_INVALID, f"signature larger than {MAX_SIGNATURE_BYTES} bytes")
        try:
            hint = json.loads(signature)["verificationMaterial"]["publicKey"]["hint"]
        except (ValueError, KeyError, TypeError):
            raise SignatureError(Refusal.SIGNATURE_INVALID,
                                 "the signature is not a model-signing key bundle (JSON with a public key id)") from None
        key = self.keys.get(hint)
        if key is None:
            raise SignatureError(Refusal.SIGNATURE_UNTRUSTED,
                                 f"signed by key {str(hint)[:16]}…, which is not one of the {len(self.keys)} trusted here")
        with tempfile.TemporaryDirectory(prefix="factpatch-verify-") as tmp:
            patch, sig = Path(tmp) / "patch.fpatch", Path(tmp) / "patch.fpatch.sig"
            patch.write_bytes(data)
            sig.write_bytes(signature)
            try:
                model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key.path).verify(patch, sig)
            except Exception as e:  # the library raises ValueError and its own errors alike
                raise SignatureError(Refusal.SIGNATURE_INVALID,
                                     f"the signature by key {hint[:16]}… does not match these bytes "
                                     f"({type(e).__name__}: {str(e)[:200]})") from None
        return hint


def shard_policy(env: dict[str, str] | None = None) -> tuple[TrustedKeys, bool]:
    """A shard's trusted keys and whether it requires signatures, from its environment; ValueError
    names what is wrong (an unreadable key, or signatures required with no key to check them)."""
    env = os.environ if env is None else env
    paths = [Path(p) for p in env.get(TRUSTED_KEYS_ENV, "").split(":") if p]
    required = env.get(REQUIRE_SIGNATURES_ENV, "").lower() in ("1", "true", "yes", "on")
    keys = TrustedKeys.load(paths)
    if required and not keys:
        raise ValueError(f"{REQUIRE_SIGNATURES_ENV} is on but {TRUSTED_KEYS_ENV} names no public key")
    return keys, required


def check_policy(keys: TrustedKeys, required: bool, data: bytes, signature: bytes | None) -> str | None:
    """The signer's key id, None for an unsigned patch a deployment allows; SignatureError when refused.
    A signature given where keys are configured must verify, required or not."""
    if not signature:
        if required:
            raise SignatureError(Refusal.SIGNATURE_REQUIRED, "this deployment requires signed patches; this one has no signature "
                                 "(sign it with `factpatch patch sign` and send the .sig with it)")
        return None
    if not keys:
        if required:
            raise SignatureError(Refusal.SIGNATURE_UNTRUSTED, "signatures are required but no trusted key is configured")
        return None  # nothing to check against: the shards that trust keys check it
    return keys.verify(data, signature)
