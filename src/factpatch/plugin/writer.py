"""Put a new dense weight into a live vLLM linear layer, the way its backend needs.

Two writers, chosen once per worker:
- `InPlaceWriter` (CUDA and any backend that keeps the dense weight): copy into the existing storage.
  CUDA graphs captured at start-up hold the weight's address, so a new tensor would be ignored.
- `CpuRepackWriter` (vLLM's CPU backend): after loading, the CPU backend packs each weight into a
  oneDNN / sgl-kernel handle and leaves `layer.weight` empty. The only way in is to hand the layer a
  dense weight again and let vLLM pack it the same way it did at load time.
Both take the full per-rank weight of the layer; building it (base + ΔW) is the caller's job.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Writer(Protocol):
    name: str

    def write(self, layer: torch.nn.Module, weight: torch.Tensor) -> None: ...

    def dense(self, layer: torch.nn.Module) -> torch.Tensor | None:
        """The layer's current dense weight, or None where the backend no longer keeps it."""
        ...


class InPlaceWriter:
    name = "in_place"

    def write(self, layer: torch.nn.Module, weight: torch.Tensor) -> None:
        w = layer.weight
        if tuple(w.shape) != tuple(weight.shape):
            raise RuntimeError(f"in-place write: layer weight is {tuple(w.shape)}, new one {tuple(weight.shape)}")
        with torch.no_grad():
            w.data.copy_(weight.to(device=w.device, dtype=w.dtype), non_blocking=False)
        if w.is_cuda:
            torch.cuda.synchronize(w.device)

    def dense(self, layer: torch.nn.Module) -> torch.Tensor | None:
        return layer.weight.data


class CpuRepackWriter:
    name = "cpu_repack"

    def write(self, layer: torch.nn.Module, weight: torch.Tensor) -> None:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dtype = layer.weight.dtype
        layer.weight = torch.nn.Parameter(weight.to(dtype).contiguous().clone(), requires_grad=False)
        # remove_weight=True: the same packing (and the same memory footprint) as at load time.
        dispatch_cpu_unquantized_gemm(layer, remove_weight=True)

    def dense(self, layer: torch.nn.Module) -> torch.Tensor | None:
        w = layer.weight
        return w.data if w.numel() else None


def writer_for_platform() -> Writer:
    from vllm.platforms import current_platform

    return CpuRepackWriter() if current_platform.is_cpu() else InPlaceWriter()
