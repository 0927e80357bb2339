"""The base checkpoint on disk: the source of truth for base weights and base fingerprints.

Read lazily with safetensors so a check touches only the tensors a patch names. Weights are handed
out in nn.Linear orientation ([out, in]); GPT-2's Conv1D tensors, stored transposed, are flipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open

from factpatch.core.patchfile import tensor_fingerprint

_SAFETENSORS_FLOATS = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}

# Conv1D weights in GPT-2 checkpoints are [in, out]; DESIGN.md states patch factors in [out, in].
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """A local folder as given, or the cached snapshot of a hub id (never downloads)."""
    p = Path(model)
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(model), local_files_only=True))


class Checkpoint(Mapping[str, torch.Tensor]):
    """Read-only, lazy mapping of checkpoint tensor name -> tensor as stored."""

    def __init__(self, model_dir: str | os.PathLike):
        self.dir = resolve_model_dir(model_dir)

    @cached_property
    def _files(self) -> dict[str, Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.dir / f for name, f in weight_map.items()}
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.dir} holds no .safetensors checkpoint")
        out: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    @cached_property
    def model_type(self) -> str:
        cfg = self.dir / "config.json"
        return json.loads(cfg.read_text()).get("model_type", "") if cfg.exists() else ""

    def __getitem__(self, name: str) -> torch.Tensor:
        f = self._files[name]  # KeyError for an unknown name, as a Mapping should
        with safe_open(str(f), framework="pt") as h:
            return h.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._files))

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, name: object) -> bool:
        return name in self._files

    def shape(self, name: str) -> tuple[int, ...]:
        with safe_open(str(self._files[name]), framework="pt") as h:
            return tuple(h.get_slice(name).get_shape())

    def weight_files(self) -> list[Path]:
        """The .safetensors files the checkpoint's tensors are stored in."""
        return sorted(set(self._files.values()))

    def weights_dtype(self) -> torch.dtype:
        """The dtype most of the stored floating-point tensors have (read from the headers alone)."""
        counts: dict[str, int] = {}
        for f in self.weight_files():
            with safe_open(str(f), framework="pt") as h:
                for name in h.keys():
                    d = h.get_slice(name).get_dtype()
                    counts[d] = counts.get(d, 0) + 1
        floats = {k: v for k, v in counts.items() if k in _SAFETENSORS_FLOATS}
        if not floats:
            raise ValueError(f"{self.dir} stores no floating-point tensors")
        return _SAFETENSORS_FLOATS[max(sorted(floats), key=lambda k: floats[k])]

    def is_transposed(self, name: str) -> bool:
        return self.model_type == "gpt2" and name.endswith(_CONV1D_SUFFIXES)

    def linear_shape(self, name: str) -> tuple[int, ...]:
        s = self.shape(name)
        return tuple(reversed(s)) if self.is_transposed(name) else s

    def linear_weight(self, name: str) -> torch.Tensor:
        """The weight in nn.Linear orientation [out, in]."""
        t = self[name]
        return t.T.contiguous() if self.is_transposed(name) else t

    def fingerprint(self, names: list[str] | None = None) -> str:
        """`tensor_fingerprint` over the named tensors as stored, or over the whole checkpoint."""
        if names is None:
            return tensor_fingerprint(self)
        return tensor_fingerprint({n: self[n] for n in names})
