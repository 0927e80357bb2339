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

import json
import logging
import threading
from functools import lru_cache
from pathlib import Path

from safetensors import safe_open

from factpatch.core.patchfile import tensor_fingerprint

log = logging.getLogger("factpatch.basecheck")


class LocalCheckpoint:
    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            self.files = {n: self.dir / f for n, f in json.loads(index.read_text())["weight_map"].items()}
        else:
            self.files = {}
            for f in sorted(self.dir.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as h:
                    self.files.update({k: f for k in h.keys()})
        if not self.files:
            raise FileNotFoundError(f"{self.dir} holds no .safetensors checkpoint")

    def tensor(self, name: str):
        with safe_open(str(self.files[name]), framework="pt") as h:
            return h.get_tensor(name)

    def fingerprint(self, names: list[str] | None = None) -> str:
        names = sorted(self.files) if names is None else names
        return tensor_fingerprint({n: self.tensor(n) for n in names})


class BaseChecker:
    def __init__(self, base_dirs: list[str | Path] = ()):
        self._dirs = [Path(d) for d in base_dirs]
        self._by_fp: dict[str, LocalCheckpoint] | None = None
        self._lock = threading.Lock()

    def _index(self) -> dict[str, LocalCheckpoint]:
        with self._lock:
            if self._by_fp is None:
                self._by_fp = {}
                for d in self._dirs:
                    ckpt = LocalCheckpoint(d)
                    self._by_fp[ckpt.fingerprint()] = ckpt
                    log.info("base %s known locally", d)
            return self._by_fp

    def warm(self) -> None:
        self._index()

    def checkpoint(self, shard_fingerprint: str) -> LocalCheckpoint | None:
        """The local copy of the base a shard reports, when one was given with --base-dir."""
        return self._index().get(shard_fingerprint)

    def check(self, shard_fingerprint: str, patch_fingerprint: str, tensors: tuple[str, ...]) -> bool | None:
        """True/False when a local copy of the shard's base decides it, None when none does."""
        ckpt = self._index().get(shard_fingerprint)
        if ckpt is None:
            return None
        return _touched_fingerprint(ckpt, tensors) == patch_fingerprint if all(t in ckpt.files for t in tensors) else False


@lru_cache(maxsize=256)
def _touched_fingerprint(ckpt: LocalCheckpoint, tensors: tuple[str, ...]) -> str:
    return ckpt.fingerprint(list(tensors))
