"""How many tokens one pass of an edit may hold, from a memory budget in bytes.

The value optimisation's memory is what autograd keeps for the backward pass: every activation from
the layer δ is added at up to the head, for every token of every row in the pass. Its size per token
depends only on the model's shape above that layer, so it is measured once, on a probe batch, with
`torch.autograd.graph.saved_tensors_hooks`: the bytes of every tensor autograd saves, each storage
counted once, the model's own weights and buffers left out (autograd keeps a reference to them, but
they are held anyway). A pass then takes rows up to `budget // bytes per token` tokens, padding
counted, so the activations of one pass stay within the budget whatever the batch's size. The no-grad
passes that read keys, residuals and references keep far less per token and take the same bound. The
peak adds that pass's transient tensors and what the edit holds besides (keys, covariance, anchors).

    per_token = activation_bytes_per_token(adapter, layer=2)
    tokens = tokens_per_pass(per_token, budget=12 * 2**20)   # 12 MiB of activations a pass

Without a budget of its own an edit takes `default_budget`: a tenth of the model's bytes, at least
256 MiB. A batch's activations otherwise grow with it (ten MEMIT edits on a 1.1B model: 2.4 × the
checkpoint at the peak), and a pass holds about twice what autograd saves (the backward's transient
gradients), so a tenth keeps an edit's peak near 1.4 × the checkpoint; the floor keeps small models'
passes large enough not to slow them (bench/results/editor_peak_memory.json).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

from .adapters import Adapter
from .hooks import add_to_output

# rows a probe pass holds, and their length: per-token bytes barely depend on the length (attention is
# computed by a fused kernel that saves no score matrix), so a short probe is enough
PROBE_ROWS, PROBE_TOKENS = 2, 32


DEFAULT_BUDGET_SHARE = 0.1
DEFAULT_BUDGET_FLOOR = 256 * 2**20


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as held (the dtype it was loaded in)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def default_budget(model: torch.nn.Module) -> int:
    """The memory budget an edit takes when given none (module docstring)."""
    return max(int(DEFAULT_BUDGET_SHARE * model_bytes(model)), DEFAULT_BUDGET_FLOOR)


def budget_bytes(setting: int | str, model: torch.nn.Module) -> int | None:
    """An edit's memory budget setting (EditOptions.memory_budget) in bytes: "default" is
    `default_budget`, "none" is None (no budget), bytes stay as given."""
    if setting == "none":
        return None
    if setting == "default":
        return default_budget(model)
    if not isinstance(setting, int) or isinstance(setting, bool):
        raise ValueError(f"memory_budget must be bytes (an int), 'default' or 'none'; got {setting!r}")
    return setting


def activation_bytes_per_token(adapter: Adapter, layer: int) -> float:
    """Bytes autograd keeps per token for a forward pass with δ added to the MLP output at `layer`."""
    model = adapter.model
    held = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.full((PROBE_ROWS, PROBE_TOKENS), 3, dtype=torch.long)
    mask = torch.ones_like(ids)
    delta = torch.zeros(PROBE_ROWS, adapter.hidden_dim(), requires_grad=True)
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with add_to_output(adapter.mlp_out(layer), torch.arange(PROBE_ROWS), torch.zeros(PROBE_ROWS, dtype=torch.long), delta):
                hidden = adapter.hidden_at(ids, mask)
            adapter.head(hidden[:, -1]).float().log_softmax(-1)
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    return sum(saved.values()) / (PROBE_ROWS * PROBE_TOKENS)


def tokens_per_pass(bytes_per_token: float, budget: int) -> int:
    """Tokens (padding included) one pass may hold within `budget` bytes of activations; at least one
    row's worth is always allowed by the caller, so a tiny budget slows the edit but never stops it."""
    if budget <= 0:
        raise ValueError(f"memory budget must be positive, got {budget} bytes")
    return max(1, int(budget // max(bytes_per_token, 1.0)))


@functools.cache
def _libc_trim():
    name = ctypes.util.find_library("c")
    fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return fn


def release_freed_memory() -> None:
    """Hand the memory an edit's passes have freed back to the system. glibc keeps freed heap for reuse,
    so after a phase of large transient tensors (the value optimisation's passes, a layer's solve) the
    process would go on holding that phase's peak through the next one. No-op without glibc."""
    trim = _libc_trim()
    if trim is not None:
        trim(0)
