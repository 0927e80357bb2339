"""Content-addressed patch store: one file per patch, named by the sha256 of its bytes.

Writes are crash-safe (temporary file, fsync, rename, fsync of the directory), so after a crash a
blob is either complete under its name or absent. Every read checks the bytes against the name,
so a file damaged on disk is reported, never served.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from factpatch.core import atomic
from factpatch.core.atomic import fsync_dir

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
log = logging.getLogger("factpatch.store")


class StoreCorrupt(Exception):
    """A stored blob no longer matches its digest."""


def valid_digest(digest: str) -> bool:
    return bool(_DIGEST.fullmatch(digest or ""))  # fullmatch: `$` alone would let a trailing newline through


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
            if self._intact(dest, digest):
                return digest
            log.warning("stored blob %s did not match its digest; rewritten from the bytes received", digest)
        # readers skip dot-names: a crash leaves no blob
        atomic.write_bytes(dest, data, prefix=".incoming-", failpoints="store.put")
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

    @staticmethod
    def _intact(path: Path, digest: str) -> bool:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest() == digest

    def clean(self, known: set[str]) -> dict[str, int]:
        """At start, before any call: remove what a crash left — unfinished writes (dot-names) and
        blobs whose patch record was never committed (not in `known`). Returns what was removed."""
        partial = [p for p in self.blobs.glob("??/.*") if p.is_file()]
        for p in partial:
            p.unlink()
        orphans = [d for d in self.digests() if d not in known]
        for d in orphans:
            self.path(d).unlink()
        if partial or orphans:
            log.warning("store: removed %d unfinished write(s) and %d blob(s) without a patch record",
                        len(partial), len(orphans))
            fsync_dir(self.blobs)
        return {"partial_writes": len(partial), "orphan_blobs": len(orphans)}

    def digests(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self.blobs.glob("??/*") if not p.name.startswith("."))
