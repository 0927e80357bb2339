"""Tensor-parallel slicing of a low-rank delta ΔW = u vᵀ (nn.Linear orientation, [out, in]).

vLLM splits a linear layer in one of two ways:
- row-parallel (RowParallelLinear: down_proj, o_proj): each rank holds a slice of the *input*
  dimension, so rank k adds u vₖᵀ with u whole and vₖ = v[in_range(k)];
- column-parallel (ColumnParallelLinear and the merged gate_up_proj): each rank holds a slice of the
  *output* dimension, so rank k adds uₖ vᵀ with uₖ = u[out_range(k)] and v whole.
Replicated layers take the factors as they are. Slicing the factors rather than the dense ΔW keeps
every rank's work and memory proportional to its share.
"""

from __future__ import annotations

from enum import Enum

import torch


class Split(str, Enum):
    ROW = "row"  # input dimension split across ranks
    COLUMN = "column"  # output dimension split across ranks
    REPLICATED = "replicated"


def shard_range(size: int, tp_size: int, rank: int) -> tuple[int, int]:
    """The [start, end) of `rank`'s equal share of a dimension of `size` (vLLM requires divisibility)."""
    if tp_size < 1 or not 0 <= rank < tp_size:
        raise ValueError(f"rank {rank} is outside a tensor-parallel group of size {tp_size}")
    if size % tp_size:
        raise ValueError(f"dimension {size} does not split evenly across {tp_size} ranks")
    n = size // tp_size
    return rank * n, (rank + 1) * n


def slice_factors(
    u: torch.Tensor, v: torch.Tensor, split: Split, tp_size: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's factors (uₖ, vₖ) such that uₖ vₖᵀ is its block of u vᵀ."""
    if split == Split.ROW:
        a, b = shard_range(v.shape[0], tp_size, rank)
        return u, v[a:b]
    if split == Split.COLUMN:
        a, b = shard_range(u.shape[0], tp_size, rank)
        return u[a:b], v
    return u, v


def slice_dense(w: torch.Tensor, split: Split, tp_size: int, rank: int) -> torch.Tensor:
    """This rank's block of a dense [out, in] weight, cut the same way as `slice_factors`."""
    if split == Split.ROW:
        a, b = shard_range(w.shape[1], tp_size, rank)
        return w[:, a:b]
    if split == Split.COLUMN:
        a, b = shard_range(w.shape[0], tp_size, rank)
        return w[a:b]
    return w


def compose(base: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """base + u vᵀ, summed in float32 and rounded once to the base dtype.

    The same arithmetic as `factpatch.core.patchfile.apply_to_state_dict`, so an engine and a transformers
    model patched with the same file hold the same bits.
    """
    return (base.to(torch.float32) + u.to(torch.float32) @ v.to(torch.float32).T).to(base.dtype)
