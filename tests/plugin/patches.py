"""Patch files for plugin tests: random low-rank factors in the DESIGN.md format, with the right base
fingerprint for the model folder they are made against."""

from __future__ import annotations

from pathlib import Path

import torch

from factpatch.core import patchfile
from factpatch.plugin.checkpoint import Checkpoint


def random_patch(
    model_dir: str | Path,
    layers: dict[int, float],
    *,
    rank: int = 4,
    seed: int = 0,
    module: str = "mlp.down_proj",
    manifest_overrides: dict | None = None,
) -> tuple[bytes, patchfile.Patch]:
    """ΔW = u vᵀ on `model.layers.N.<module>.weight` for each N, scaled so ‖ΔW‖ = scale · ‖W‖."""
    ck = Checkpoint(model_dir)
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for layer, scale in sorted(layers.items()):
        name = f"model.layers.{layer}.{module}.weight"
        w = ck.linear_weight(name).float()
        u = torch.randn(w.shape[0], rank, generator=g)
        v = torch.randn(w.shape[1], rank, generator=g)
        norm = (u @ v.T).norm()
        u = u * (scale * w.norm() / norm)
        factors[name] = (u.contiguous(), v.contiguous())
    manifest = patchfile.new_manifest(
        model_name=str(model_dir),
        fingerprint=ck.fingerprint(sorted(factors)),
        method="random",
        layers=list(layers),
        hparams={"rank": rank, "seed": seed},
        edits=[],
    )
    manifest.update(manifest_overrides or {})
    patch = patchfile.Patch(factors=factors, manifest=manifest)
    return patchfile.to_bytes(patch), patch
