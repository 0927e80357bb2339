"""Writing low-rank deltas into a live model, with exactly the arithmetic a patch file's reader uses."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from factpatch.core.patchfile import Patch, apply_to_state_dict

from .adapters import Adapter


@torch.no_grad()
def add_low_rank(adapter: Adapter, layer: int, u: torch.Tensor, v: torch.Tensor) -> None:
    """W += u vᵀ at `layer`'s MLP output projection (u [out, r], v [in, r], nn.Linear orientation)."""
    name = adapter.param_name(layer)
    patch = Patch(factors={name: (u.to(torch.float32), v.to(torch.float32))})
    apply_to_state_dict({name: adapter.weight(layer).data}, patch, conv1d_names=adapter.conv1d_names())


def concat_ranks(first: tuple[torch.Tensor, torch.Tensor], then: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two low-rank deltas of one weight as one: (u₁|u₂)(v₁|v₂)ᵀ = u₁v₁ᵀ + u₂v₂ᵀ."""
    return torch.cat([first[0], then[0]], 1), torch.cat([first[1], then[1]], 1)


@torch.no_grad()
def apply_patch(adapter: Adapter, patch: Patch) -> None:
    """weights = weights + ΔX for every weight the patch names (the model must hold the base)."""
    state = dict(adapter.model.state_dict())
    apply_to_state_dict(state, patch, conv1d_names=adapter.conv1d_names())


@torch.no_grad()
def snapshot(adapter: Adapter, layers) -> dict[int, torch.Tensor]:
    return {l: adapter.weight(l).detach().clone() for l in layers}


@torch.no_grad()
def restore(adapter: Adapter, saved: dict[int, torch.Tensor]) -> None:
    for l, w in saved.items():
        adapter.weight(l).data.copy_(w)


@contextlib.contextmanager
def restored_after(adapter: Adapter, names: Iterable[str]) -> Iterator[None]:
    """Whatever happens to the named weights inside the block, they are back bit for bit after it
    (applying a patch to measure it, computing an edit on a parent's weights)."""
    state = adapter.model.state_dict()
    saved = {n: state[n].detach().clone() for n in names}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                state[n].copy_(w)
