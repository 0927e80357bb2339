"""Refusing a patch made for another base before any shard is touched.

A shard reports `base_fingerprint`: tensor_fingerprint over its whole checkpoint as stored. A patch
carries `base.fingerprint`: tensor_fingerprint over only the tensors it writes. The two can be
compared through a local copy of the checkpoint: for every `--base-dir` the control plane hashes the
whole checkpoint once (which identifies the shards serving it) and can then hash the tensors a patch
names. Shards whose base has no local copy fall back to what earlier applies taught (db.base_compat);
for a base never seen, the canary is the first shard asked and its own BASE_MISMATCH refusal leaves
it unchanged and rolls the rollout back.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from factpatch.core.checkpoint import Checkpoint

log = logging.getLogger("factpatch.basecheck")


class BaseChecker:
    def __init__(self, base_dirs: list[str | Path] = ()):
        self._dirs = [Path(d) for d in base_dirs]
        self._by_fp: dict[str, Checkpoint] | None = None
        self._touched: dict[tuple[str, tuple[str, ...]], str] = {}  # (base, tensors) -> their fingerprint
        self._lock = threading.Lock()

    def _index(self) -> dict[str, Checkpoint]:
        with self._lock:
            if self._by_fp is None:
                self._by_fp = {}
                for d in self._dirs:
                    ckpt = Checkpoint(d)
                    self._by_fp[ckpt.fingerprint()] = ckpt
                    log.info("base %s known locally", d)
            return self._by_fp

    def warm(self) -> None:
        self._index()

    def checkpoint(self, shard_fingerprint: str) -> Checkpoint | None:
        """The local copy of the base a shard reports, when one was given with --base-dir."""
        return self._index().get(shard_fingerprint)

    def for_patch(self, patch_fingerprint: str, tensors: tuple[str, ...]) -> Checkpoint | None:
        """The local base a patch was made for (its tensors fingerprint as the patch says), if any."""
        for ckpt in self._index().values():
            if all(t in ckpt for t in tensors) and ckpt.fingerprint(list(tensors)) == patch_fingerprint:
                return ckpt
        return None

    def check(self, shard_fingerprint: str, patch_fingerprint: str, tensors: tuple[str, ...]) -> bool | None:
        """True/False when a local copy of the shard's base decides it, None when none does."""
        ckpt = self._index().get(shard_fingerprint)
        if ckpt is None:
            return None
        if not all(t in ckpt for t in tensors):
            return False
        key = (shard_fingerprint, tensors)
        if key not in self._touched:
            if len(self._touched) >= 256:  # a bound, not an LRU: patches come and go slowly
                self._touched.clear()
            self._touched[key] = ckpt.fingerprint(list(tensors))
        return self._touched[key] == patch_fingerprint
