"""Forward hooks: read the MLP projection's input (the key) and add a vector to its output (the value)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def capture_input(module: nn.Module, rows: torch.Tensor, positions: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Collects module input[rows, positions] on each forward into the yielded list."""
    got: list[torch.Tensor] = []

    def hook(mod, args):
        got.append(args[0][rows, positions].detach())

    h = module.register_forward_pre_hook(hook)
    try:
        yield got
    finally:
        h.remove()


@contextlib.contextmanager
def capture_output(module: nn.Module, rows: torch.Tensor, positions: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Collects module output[rows, positions] (the first element for blocks that return tuples)."""
    got: list[torch.Tensor] = []

    def hook(mod, args, output):
        out = output[0] if isinstance(output, tuple) else output
        got.append(out[rows, positions].detach())

    h = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        h.remove()


@contextlib.contextmanager
def add_to_output(module: nn.Module, rows: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """output[rows[i], positions[i]] += values[i] on every forward (differentiable in `values`)."""

    def hook(mod, args, output):
        out = output.clone()
        out[rows, positions] = out[rows, positions] + values.to(out.dtype)
        return out

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


@contextlib.contextmanager
def add_rank_one(module: nn.Module, directions: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """output[b, t] += (input[b, t] · directions[b]) values[b] at every position: exactly what
    W += values · directionsᵀ does to row b, so an optimised value is the value the patch writes."""

    def hook(mod, args, output):
        gain = torch.einsum("btk,bk->bt", args[0].to(directions.dtype), directions)
        return output + (gain[..., None] * values[:, None, :]).to(output.dtype)

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


@contextlib.contextmanager
def add_low_rank_update(module: nn.Module, directions: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """output += (input @ directions) @ values at every position of every row: exactly what
    W += valuesᵀ directionsᵀ does (directions [key_dim, n], values [n, d]), so each row sees every
    edit's update, the other edits' spill onto it included."""

    def hook(mod, args, output):
        gain = args[0].to(directions.dtype) @ directions
        return output + (gain @ values).to(output.dtype)

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()
