"""The `.fpatch` artifact: one safetensors file of low-rank factors plus a JSON manifest.

Contract (DESIGN.md): for every edited weight `P` (its Hugging Face checkpoint name) the file holds
`P::u` float32 [out, r] and `P::v` float32 [in, r]; ΔW = u @ v.T in nn.Linear orientation [out, in].
Metadata key `factpatch` holds the manifest. Identity is `sha256:<hex of the file bytes>`.

This module is imported by the editor, the vLLM plugin and the control plane, so it depends on
nothing but torch, safetensors and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from factpatch.core import atomic
from factpatch.core.reasons import Refusal

FORMAT = "factpatch/v1"
METADATA_KEY = "factpatch"
DEFAULT_MAX_RANK = 4096
# safetensors refuses larger headers; checked before parsing so a huge one costs nothing
MAX_HEADER_BYTES = 100_000_000


class PatchError(ValueError):
    """A patch file or manifest is malformed; the message names what is wrong.

    `reason` is a machine-readable code (MALFORMED, UNKNOWN_FORMAT, NON_FINITE, RANK_TOO_LARGE,
    UNKNOWN_TENSOR, SHAPE_MISMATCH) that services return to their callers.
    """

    def __init__(self, message: str, reason: str = Refusal.MALFORMED):
        super().__init__(message)
        self.reason = reason


@dataclass
class Patch:
    """Low-rank factors per weight and the manifest that describes them."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (u [out,r], v [in,r])
    manifest: dict[str, Any] = field(default_factory=dict)

    def delta(self, name: str) -> torch.Tensor:
        u, v = self.factors[name]
        return u @ v.T

    @property
    def names(self) -> list[str]:
        return sorted(self.factors)

    def rank(self, name: str) -> int:
        return int(self.factors[name][0].shape[1])


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the bytes of the named base tensors, in name order (name, dtype and shape included)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def new_manifest(
    *,
    model_name: str,
    fingerprint: str,
    method: str,
    layers: Iterable[int],
    hparams: Mapping[str, Any],
    edits: list[Mapping[str, Any]],
    parent: str | None = None,
    eval: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "base": {"model": model_name, "fingerprint": fingerprint},
        "method": method,
        "layers": sorted(int(x) for x in layers),
        "hparams": dict(hparams),
        "edits": [dict(e) for e in edits],
        "parent": parent,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "eval": dict(eval) if eval else None,
    }


def to_bytes(patch: Patch) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for name, (u, v) in patch.factors.items():
        tensors[f"{name}::u"] = u.detach().to(torch.float32).contiguous().cpu()
        tensors[f"{name}::v"] = v.detach().to(torch.float32).contiguous().cpu()
    return st_save(tensors, metadata={METADATA_KEY: json.dumps(patch.manifest, sort_keys=True)})


def write(patch: Patch, path: str | os.PathLike) -> str:
    """Write atomically (temp file + fsync + rename) and return the patch's digest."""
    data = to_bytes(patch)
    atomic.write_bytes(path, data)
    return sha256_bytes(data)


def _json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser's stack
        raise PatchError(f"{what} is not valid JSON: {str(e)[:200]}") from None


def _read_manifest_from_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise PatchError("patch file is truncated: shorter than the safetensors header length")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise PatchError("patch file is truncated or not safetensors: header length out of range")
    if n > MAX_HEADER_BYTES:
        raise PatchError(f"patch header is {n} bytes, more than the {MAX_HEADER_BYTES} safetensors allows")
    header = _json(data[8 : 8 + n], "patch header")
    if not isinstance(header, dict):
        raise PatchError("patch header must be a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise PatchError("patch header field '__metadata__' must map names to strings")
    if METADATA_KEY not in meta:
        raise PatchError(f"patch has no '{METADATA_KEY}' manifest in its safetensors metadata")
    manifest = _json(meta[METADATA_KEY], "manifest")
    if not isinstance(manifest, dict):
        raise PatchError("manifest must be a JSON object")
    return manifest


def _check_manifest(manifest: dict[str, Any]) -> None:
    """Types of the fields the store, the API and the monitors read (DESIGN.md), so a patch that
    passes here can always be listed and served."""
    base = manifest["base"]
    if not isinstance(base.get("fingerprint"), str):
        raise PatchError("manifest field 'base.fingerprint' must be a string")
    if not isinstance(base.get("model"), (str, type(None))):
        raise PatchError("manifest field 'base.model' must be a string")
    layers = manifest.get("layers")
    if layers is not None and not (
        isinstance(layers, list) and all(type(x) is int and 0 <= x < 2**31 for x in layers)
    ):
        raise PatchError("manifest field 'layers' must be a list of layer indices (0 <= n < 2^31)")
    edits = manifest.get("edits")
    if edits is not None and not (isinstance(edits, list) and all(isinstance(e, dict) for e in edits)):
        raise PatchError("manifest field 'edits' must be a list of objects")
    for i, e in enumerate(edits or []):
        for key in ("subject", "relation", "prompt", "target_new", "target_old"):
            if not isinstance(e.get(key), (str, type(None))):
                raise PatchError(f"manifest field 'edits[{i}].{key}' must be a string")
        if not isinstance(e.get("provenance"), (dict, type(None))):
            raise PatchError(f"manifest field 'edits[{i}].provenance' must be an object")
    if not isinstance(manifest.get("parent"), (str, type(None))):
        raise PatchError("manifest field 'parent' must be a digest string or null")
    try:  # JSON may escape lone surrogates, which no protobuf string or UTF-8 writer accepts
        json.dumps(manifest, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PatchError("manifest holds text that is not valid Unicode (a lone surrogate)") from None


def from_bytes(data: bytes, *, max_rank: int = DEFAULT_MAX_RANK) -> Patch:
    """Parse and validate a patch: format, factor pairing, dtype, 2-D shapes, rank limit, finiteness."""
    manifest = _read_manifest_from_header(data)
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise PatchError(f"unknown patch format {fmt!r}; this build reads {FORMAT!r}", Refusal.UNKNOWN_FORMAT)
    base = manifest.get("base")
    if not isinstance(base, dict) or not base.get("fingerprint"):
        raise PatchError("manifest field 'base.fingerprint' is missing")
    _check_manifest(manifest)
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise PatchError(f"patch tensors are unreadable: {e}") from None
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    names = {k.rsplit("::", 1)[0] for k in tensors}
    for key in tensors:
        if not (key.endswith("::u") or key.endswith("::v")) or key in ("::u", "::v"):
            raise PatchError(f"tensor {key!r} is neither '<param>::u' nor '<param>::v'")
    for name in sorted(names):
        u, v = tensors.get(f"{name}::u"), tensors.get(f"{name}::v")
        if u is None or v is None:
            raise PatchError(f"weight {name!r} has only one of its two factors (::u and ::v)")
        for tag, t in (("u", u), ("v", v)):
            if t.dtype != torch.float32:
                raise PatchError(f"{name}::{tag} must be float32, got {t.dtype}")
            if t.dim() != 2:
                raise PatchError(f"{name}::{tag} must be 2-D, got shape {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise PatchError(f"{name}::{tag} holds non-finite values (NaN or Inf)", Refusal.NON_FINITE)
        if u.shape[1] != v.shape[1]:
            raise PatchError(f"{name}: rank of u ({u.shape[1]}) differs from rank of v ({v.shape[1]})")
        if u.shape[1] > max_rank:
            raise PatchError(f"{name}: rank {u.shape[1]} exceeds the limit {max_rank}", Refusal.RANK_TOO_LARGE)
        factors[name] = (u, v)
    if not factors:
        raise PatchError("patch holds no weight factors")
    return Patch(factors=factors, manifest=manifest)


def read(path: str | os.PathLike, *, max_rank: int = DEFAULT_MAX_RANK) -> tuple[Patch, str]:
    """Read a patch file; returns the patch and its digest."""
    data = Path(path).read_bytes()
    return from_bytes(data, max_rank=max_rank), sha256_bytes(data)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest alone, without loading tensors."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        raise PatchError(f"{path}: no '{METADATA_KEY}' manifest")
    return json.loads(meta[METADATA_KEY])


def apply_to_state_dict(
    state: dict[str, torch.Tensor], patch: Patch, *, conv1d_names: Iterable[str] = ()
) -> None:
    """weights = weights + u vᵀ for every named tensor, in place, in the tensor's dtype.

    `conv1d_names` lists checkpoint tensors stored transposed ([in, out], GPT-2's Conv1D).
    """
    transposed = set(conv1d_names)
    for name in patch.names:
        if name not in state:
            raise PatchError(f"patch names {name!r}, which the model does not have", Refusal.UNKNOWN_TENSOR)
        w = state[name]
        d = patch.delta(name)
        if name in transposed:
            d = d.T
        if tuple(d.shape) != tuple(w.shape):
            raise PatchError(
                f"{name}: patch shape {tuple(d.shape)} does not match weight {tuple(w.shape)}", Refusal.SHAPE_MISMATCH
            )
        w.copy_((w.to(torch.float32) + d).to(w.dtype))


def relative_change(w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    """‖u vᵀ‖_F / ‖W‖_F without materialising u vᵀ."""
    # ‖u vᵀ‖_F² = trace((uᵀu)(vᵀv))
    num = torch.trace((u.T @ u) @ (v.T @ v)).clamp_min(0).item()
    den = w.to(torch.float32).norm().item()
    return math.sqrt(num) / den if den else float("inf")
