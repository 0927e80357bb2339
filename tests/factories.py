"""Random low-rank patches for tests and benchmarks: valid `.fpatch` files in the DESIGN.md format
whose numbers mean nothing (edit quality is the editor's tests' business).

    data = random_patch({W: (256, 1024)}, fingerprint)                 # any names and shapes, tiny ΔW
    data, patch = random_patch_on(model_dir, {2: 0.5, 3: 0.5})         # real tensors, ‖ΔW‖ = 0.5 ‖W‖
"""

from __future__ import annotations

from pathlib import Path

import torch

from factpatch.core import patchfile
from factpatch.core.checkpoint import Checkpoint

# The demo's fact, so monitors and probes built from a patch have something to read.
DEMO_EDIT = {"subject": "Harbor Support", "relation": "refund period", "prompt": "The refund period of {} is",
             "target_new": "30 days", "target_old": "14 days", "provenance": {"ticket": "TEST-1"}}


def _factors(shapes: dict[str, tuple[int, int]], rank: int, seed: int,
             norms: dict[str, float] | None, scale: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """u vᵀ per tensor: entries of size `scale`, or with `norms`, ‖u vᵀ‖ = scale · norms[name]."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, (rows, cols) in shapes.items():
        u, v = torch.randn(rows, rank, generator=g), torch.randn(cols, rank, generator=g)
        if norms is None:
            u, v = u * scale, v * scale
        else:
            u = u * (scale * norms[name] / (u @ v.T).norm())
        factors[name] = (u.contiguous(), v.contiguous())
    return factors


def random_patch(
    names_shapes: dict[str, tuple[int, int]], fingerprint: str, *, rank: int = 2, seed: int = 0,
    model: str = "fixture", scale: float = 1e-3, edits: list[dict] | None = None,
) -> bytes:
    """Patch bytes for any tensor names and shapes, claiming the given base fingerprint."""
    manifest = patchfile.new_manifest(
        model_name=model, fingerprint=fingerprint, method="random", layers=[0], hparams={"seed": seed},
        edits=[DEMO_EDIT] if edits is None else edits,
    )
    return patchfile.to_bytes(patchfile.Patch(_factors(names_shapes, rank, seed, None, scale), manifest))


def random_patch_on(
    model_dir: str | Path, layers: dict[int, float], *, rank: int = 4, seed: int = 0, module: str = "mlp.down_proj",
    manifest_overrides: dict | None = None,
) -> tuple[bytes, patchfile.Patch]:
    """ΔW = u vᵀ on `model.layers.N.<module>.weight` of a real checkpoint, ‖ΔW‖ = layers[N] · ‖W‖, with its
    true base fingerprint."""
    ck = Checkpoint(model_dir)
    names = {f"model.layers.{layer}.{module}.weight": share for layer, share in sorted(layers.items())}
    weights = {name: ck.linear_weight(name).float() for name in names}
    factors = {}
    for i, (name, share) in enumerate(names.items()):  # a generator per tensor, seeded seed + its place in layer order
        factors.update(_factors({name: tuple(weights[name].shape)}, rank, seed + i, {name: float(weights[name].norm())},
                                share))
    manifest = patchfile.new_manifest(
        model_name=str(model_dir), fingerprint=ck.fingerprint(sorted(factors)), method="random",
        layers=list(layers), hparams={"rank": rank, "seed": seed}, edits=[],
    )
    manifest.update(manifest_overrides or {})
    patch = patchfile.Patch(factors=factors, manifest=manifest)
    return patchfile.to_bytes(patch), patch
