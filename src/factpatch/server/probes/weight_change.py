"""How big a patch is against its base: cumulative edits, and ‖ΔW‖/‖W‖ per touched weight.

The edit count comes from the manifest (complete against the base, parents' edits included). The
relative change needs the base's weights, so it is known only when the control plane has a local
copy of the shard's base (`--base-dir`); it is computed once per (patch, base) without ever
materialising ΔW.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from factpatch.core.patchfile import PatchError, from_bytes, relative_change
from factpatch.server.state.store import StoreCorrupt


@dataclass(frozen=True)
class PatchSize:
    edits: int
    relative_max: float | None  # largest ‖ΔW‖/‖W‖ over the touched weights
    relative_mean: float | None
    tensors: int


class PatchSizes:
    def __init__(self, store, basecheck):
        self.store = store
        self.basecheck = basecheck
        self._cache: dict[tuple[str, str], PatchSize] = {}
        self._lock = threading.Lock()

    def get(self, digest: str, manifest: dict, base_fingerprint: str) -> PatchSize:
        key = (digest, base_fingerprint)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        size = self._compute(digest, manifest, base_fingerprint)
        with self._lock:
            self._cache[key] = size
        return size

    def _compute(self, digest: str, manifest: dict, base_fingerprint: str) -> PatchSize:
        edits = len(manifest.get("edits", []))
        ckpt = self.basecheck.checkpoint(base_fingerprint) if base_fingerprint else None
        if ckpt is None:
            return PatchSize(edits, None, None, 0)
        try:
            patch = from_bytes(self.store.get(digest))
        except (PatchError, OSError, StoreCorrupt):  # a bad store entry is the reconciler's to report
            return PatchSize(edits, None, None, 0)
        ratios = [relative_change(ckpt.linear_weight(name), u, v) for name, (u, v) in patch.factors.items() if name in ckpt]
        if not ratios:
            return PatchSize(edits, None, None, 0)
        return PatchSize(edits, max(ratios), sum(ratios) / len(ratios), len(ratios))
