"""Content-addressed patch store: one file per patch, named by the sha256 of its bytes.

Writes are crash-safe (temporary file, fsync, rename, fsync of the directory), so after a crash a
blob is either complete under its name or absent. Every read checks the bytes against the name,
so a file damaged on disk is reported, never served.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from factpatch.core import atomic
from factpatch.core.atomic import fsync_dir

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class StoreCorrupt(Exception):
    """A stored blob no longer matches its digest."""


def valid_digest(digest: str) -> bool:
    return bool(_DIGEST.match(digest or ""))


class PatchStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blobs = self.root / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        hexd = digest.split(":", 1)[1]
        return self.blobs / hexd[:2] / hexd

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def put(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        dest = self.path(digest)
        if dest.exists():
            return digest
        atomic.write_bytes(dest, data, prefix=".incoming-")  # readers skip dot-names: a crash leaves no blob
        fsync_dir(self.blobs)
        return digest

    def get(self, digest: str) -> bytes:
        data = self.path(digest).read_bytes()  # FileNotFoundError for unknown digests
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise StoreCorrupt(f"stored blob {digest} reads back as {actual}")
        return data

    def delete(self, digest: str) -> None:
        p = self.path(digest)
        if p.exists():
            p.unlink()
            fsync_dir(p.parent)

    def digests(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self.blobs.glob("??/*") if not p.name.startswith("."))
