"""Map a patch's checkpoint tensor names onto this rank's vLLM layers.

A checkpoint name `P` (`model.layers.5.mlp.down_proj.weight`) lands in one vLLM linear layer, either
under the same module path or inside a merged layer (`gate_proj` and `up_proj` share `gate_up_proj`).
Each mapping says which rows of the layer's per-rank weight the tensor occupies and how its factors
are split across tensor-parallel ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from factpatch.core.reasons import Refusal

from .tp import Split


class TargetError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    name: str  # checkpoint tensor name
    module: str  # vLLM module path holding it
    split: Split
    tp_size: int
    tp_rank: int
    row0: int  # first row of this tensor inside the layer's per-rank weight
    rows: int  # rows it occupies there
    out_features: int  # full (unsplit) shape of the checkpoint tensor, nn.Linear orientation
    in_features: int


def _linear_classes():
    from vllm.model_executor.layers import linear as L

    return L


def resolve(model: torch.nn.Module, name: str) -> tuple[Target, torch.nn.Module, list[str]]:
    """The target for `name`, its layer, and every checkpoint name that layer is built from."""
    L = _linear_classes()
    if not name.endswith(".weight"):
        raise TargetError(Refusal.UNKNOWN_TENSOR, f"{name!r}: only '.weight' tensors of linear layers can be patched")
    path = name[: -len(".weight")]
    parent, _, leaf = path.rpartition(".")
    shard_idx, parts = None, [name]
    try:
        layer = model.get_submodule(path)
    except AttributeError:
        layer = None
        for packed, subs in (getattr(model, "packed_modules_mapping", None) or {}).items():
            if leaf in subs:
                try:
                    layer = model.get_submodule(f"{parent}.{packed}" if parent else packed)
                except AttributeError:
                    continue
                shard_idx = subs.index(leaf)
                parts = [f"{parent}.{s}.weight" if parent else f"{s}.weight" for s in subs]
                path = f"{parent}.{packed}" if parent else packed
                break
        if layer is None:
            raise TargetError(Refusal.UNKNOWN_TENSOR, f"{name!r}: this model has no such weight") from None

    if not isinstance(layer, L.LinearBase):
        raise TargetError(Refusal.UNSUPPORTED_TENSOR, f"{name!r} is not a linear layer ({type(layer).__name__})")
    if not isinstance(getattr(layer, "quant_method", None), L.UnquantizedLinearMethod):
        raise TargetError(Refusal.UNSUPPORTED_TENSOR, f"{name!r}: quantized layers cannot take a dense delta")
    if isinstance(layer, L.QKVParallelLinear):
        # Head-wise splitting (and KV-head replication) is not handled; MLP edits never need it.
        raise TargetError(Refusal.UNSUPPORTED_TENSOR, f"{name!r}: fused q/k/v projections are not supported")

    tp_size, tp_rank = int(getattr(layer, "tp_size", 1)), int(getattr(layer, "tp_rank", 0))
    if isinstance(layer, L.RowParallelLinear):
        split, out_f, in_f = Split.ROW, layer.output_size, layer.input_size
        row0, rows = 0, layer.output_size
    elif isinstance(layer, L.MergedColumnParallelLinear):
        if shard_idx is None:
            raise TargetError(Refusal.UNSUPPORTED_TENSOR, f"{name!r}: patch the checkpoint's own tensors, not the merged layer")
        split, out_f, in_f = Split.COLUMN, layer.output_sizes[shard_idx], layer.input_size
        row0 = sum(layer.output_sizes[:shard_idx]) // tp_size
        rows = out_f // tp_size
    elif isinstance(layer, L.ColumnParallelLinear):
        split, out_f, in_f = Split.COLUMN, layer.output_size, layer.input_size
        row0, rows = 0, out_f // tp_size
    elif isinstance(layer, L.ReplicatedLinear):
        split, out_f, in_f = Split.REPLICATED, layer.output_size, layer.input_size
        row0, rows = 0, out_f
        tp_size, tp_rank = 1, 0
    else:
        raise TargetError(Refusal.UNSUPPORTED_TENSOR, f"{name!r}: unsupported layer type {type(layer).__name__}")
    if split == Split.ROW and tp_size > 1 and in_f % tp_size:
        raise TargetError(Refusal.UNSUPPORTED_TENSOR, f"{name!r}: input {in_f} does not split across {tp_size} ranks")
    t = Target(name, path, split, tp_size, tp_rank, row0, rows, out_f, in_f)
    return t, layer, parts


def layer_shape(layer: torch.nn.Module) -> tuple[int, int]:
    """The per-rank [out, in] shape of a linear layer's weight (also once the CPU backend dropped it)."""
    out = getattr(layer, "output_size_per_partition", None) or layer.output_size
    inp = getattr(layer, "input_size_per_partition", None) or layer.input_size
    return int(out), int(inp)
