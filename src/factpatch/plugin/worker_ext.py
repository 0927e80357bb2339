"""The worker extension: what runs on every tensor-parallel rank.

Passed to vLLM as `--worker-extension-cls factpatch.plugin.worker_ext.FactpatchWorkerExtension`; vLLM
mixes it into its worker class, and the API server reaches these methods with `collective_rpc`.

Every write is two-phase so a shard changes on all ranks or none:
1. `factpatch_stage` parses the patch, maps its tensors onto this rank's layers and computes every new
   per-rank weight without touching the model. Any problem comes back as a reason, not an exception.
2. `factpatch_commit` writes the staged weights. If a write fails the rank puts back what it had.
   If another rank failed, the coordinator calls `factpatch_rollback` to return to the previous version.

State per rank: an exact copy of the base weight of every layer that currently differs from base
(dropped again once the layer is back at base), and the factors of the active version. Versions are
complete: switching X → Y writes base + ΔY and puts X-only layers back to base.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from factpatch.core.checkpoint import Checkpoint
from factpatch.core.patchfile import Patch, PatchError, from_bytes
from factpatch.core.reasons import Refusal

from .targets import Target, TargetError, layer_shape, resolve
from .tp import compose, slice_dense, slice_factors
from .writer import Writer, writer_for_platform


@dataclass
class _Module:
    layer: torch.nn.Module
    parts: list[str]  # checkpoint tensors this layer is built from
    edits: list[tuple[Target, torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass
class _Staged:
    version: str | None
    patch: Patch | None
    weights: dict[str, torch.Tensor]  # module -> new per-rank weight
    bases: dict[str, torch.Tensor]  # module -> exact base, for modules that stay or become patched


@dataclass
class _RankState:
    writer: Writer
    bases: dict[str, torch.Tensor] = field(default_factory=dict)
    version: str | None = None
    patch: Patch | None = None
    applied_at: float | None = None
    staged: _Staged | None = None
    previous: tuple[str | None, Patch | None] | None = None


def _fail(reason: str, message: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "message": message}


class FactpatchWorkerExtension:
    """Mixed into vLLM's worker; `self.model_runner` and `self.vllm_config` come from the worker."""

    # --- helpers -------------------------------------------------------------------------------

    def _fp(self) -> _RankState:
        st = getattr(self, "_factpatch_state", None)
        if st is None:
            st = _RankState(writer=writer_for_platform())
            self._factpatch_state = st
        return st

    def _fp_model(self) -> torch.nn.Module:
        return self.model_runner.get_model()

    def _fp_checkpoint(self) -> Checkpoint:
        ck = getattr(self, "_factpatch_ckpt", None)
        if ck is None:
            ck = Checkpoint(self.vllm_config.model_config.model)
            self._factpatch_ckpt = ck
        return ck

    def _fp_rank(self) -> int:
        return int(getattr(self, "rank", 0))

    def _fp_base(self, module: str, mod: _Module, held: dict[str, torch.Tensor]) -> torch.Tensor:
        """The exact base per-rank weight of a layer: held copy, live weight, or checkpoint."""
        st = self._fp()
        if module in held:
            return held[module]
        live = st.writer.dense(mod.layer)
        if live is not None and live.numel():
            # Untouched layers hold base; a CPU copy keeps accelerator memory free.
            return live.detach().to("cpu", copy=True)
        # The CPU backend dropped the dense weight after packing: rebuild it from the checkpoint,
        # cut and cast exactly as vLLM's loader did.
        ck = self._fp_checkpoint()
        out, inp = layer_shape(mod.layer)
        dtype = mod.layer.weight.dtype
        base = torch.empty(out, inp, dtype=dtype)
        model = self._fp_model()
        for part in mod.parts:
            t, _, _ = resolve(model, part)
            block = slice_dense(ck.linear_weight(part), t.split, t.tp_size, t.tp_rank)
            base[t.row0 : t.row0 + t.rows].copy_(block.to(dtype))
        return base

    def _fp_group(self, patch: Patch) -> dict[str, _Module]:
        model = self._fp_model()
        groups: dict[str, _Module] = {}
        for name in patch.names:
            t, layer, parts = resolve(model, name)
            u, v = patch.factors[name]
            if tuple(u.shape[:1]) != (t.out_features,) or tuple(v.shape[:1]) != (t.in_features,):
                raise TargetError(
                    Refusal.SHAPE_MISMATCH,
                    f"{name}: factors give ΔW {u.shape[0]}x{v.shape[0]}, the weight is {t.out_features}x{t.in_features}",
                )
            u_k, v_k = slice_factors(u, v, t.split, t.tp_size, t.tp_rank)
            groups.setdefault(t.module, _Module(layer, parts)).edits.append((t, u_k, v_k))
        return groups

    def _fp_build(
        self, patch: Patch | None, held: dict[str, torch.Tensor] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """New weights for every layer that `patch` touches or that must go back to base
        (None = base), and the exact base of each patched layer."""
        st = self._fp()
        held = st.bases if held is None else held
        groups = self._fp_group(patch) if patch is not None else {}
        model = self._fp_model()
        for module in held:
            if module not in groups:
                layer = model.get_submodule(module)
                groups[module] = _Module(layer, [])
        weights: dict[str, torch.Tensor] = {}
        bases: dict[str, torch.Tensor] = {}
        for module, mod in groups.items():
            if not mod.parts:  # held base of a layer the target version leaves alone
                weights[module] = held[module]
                continue
            base = self._fp_base(module, mod, held)
            w = base.clone()
            for t, u_k, v_k in mod.edits:
                rows = slice(t.row0, t.row0 + t.rows)
                w[rows] = compose(base[rows], u_k, v_k)
            # Finite factors can still overflow once added in the serving dtype (fp16 tops out at 65504):
            # checked on the weight this rank would write, before anything is written.
            if not torch.isfinite(w).all():
                raise TargetError(Refusal.NON_FINITE, f"{module}: base + ΔW holds NaN or Inf in {w.dtype}")
            weights[module], bases[module] = w, base
        return weights, bases

    def _fp_check_engine(self) -> None:
        from vllm.config import CompilationMode
        from vllm.platforms import current_platform

        # A traced CPU graph bakes the packed weight handle in, so a re-pack would be ignored.
        if current_platform.is_cpu() and self.vllm_config.compilation_config.mode != CompilationMode.NONE:
            raise TargetError(
                Refusal.ENGINE_UNSUPPORTED, "on the CPU backend patches need an eager engine (start vLLM with --enforce-eager)"
            )

    # --- RPC surface -----------------------------------------------------------------------------

    def factpatch_stage(self, data: bytes | None, version: str | None) -> dict[str, Any]:
        """Prepare `version` (patch bytes; None = base) without writing. Returns {"ok": ...}."""
        st = self._fp()
        st.staged = None
        try:
            self._fp_check_engine()
            patch = from_bytes(data) if data is not None else None
            weights, bases = self._fp_build(patch)
        except PatchError as e:
            return _fail(e.reason, str(e))
        except TargetError as e:
            return _fail(e.reason, str(e))
        except Exception as e:  # an unexpected failure still leaves the rank untouched
            return _fail("STAGE_FAILED", f"{type(e).__name__}: {e}")
        st.staged = _Staged(version, patch, weights, bases)
        return {"ok": True, "rank": self._fp_rank(), "modules": sorted(weights)}

    def factpatch_commit(self, version: str | None) -> dict[str, Any]:
        st = self._fp()
        staged = st.staged
        if staged is None or staged.version != version:
            return _fail("NOT_STAGED", f"version {version!r} is not staged on rank {self._fp_rank()}")
        model = self._fp_model()
        written: list[str] = []
        try:
            for module, w in staged.weights.items():
                st.writer.write(model.get_submodule(module), w)
                written.append(module)
        except Exception as e:
            restored = self._fp_restore(written, staged)
            st.staged = None
            return _fail("WRITE_FAILED", f"rank {self._fp_rank()}: {type(e).__name__}: {e}; restored={restored}")
        st.previous = (st.version, st.patch)
        # Base copies are kept only for layers that now differ from base.
        st.bases = dict(staged.bases)
        st.version, st.patch = staged.version, staged.patch
        st.applied_at = time.time() if staged.version is not None else None
        st.staged = None
        return {"ok": True, **self.factpatch_state()}

    def _fp_restore(self, modules: list[str], staged: _Staged) -> bool:
        """Put the active version back into `modules` after a failed commit."""
        st = self._fp()
        try:
            # Written layers no longer hold base in place: take bases from what stage saved.
            bases = {**staged.bases, **st.bases}
            weights, _ = self._fp_build(st.patch, bases)
            model = self._fp_model()
            for m in modules:
                st.writer.write(model.get_submodule(m), weights.get(m, bases[m]))
            return True
        except Exception:
            return False

    def factpatch_discard(self) -> dict[str, Any]:
        self._fp().staged = None
        return {"ok": True}

    def factpatch_rollback(self) -> dict[str, Any]:
        """Return to the version active before the last commit (another rank failed to commit)."""
        st = self._fp()
        if st.previous is None:
            return {"ok": True, **self.factpatch_state()}
        version, patch = st.previous
        try:
            weights, bases = self._fp_build(patch)
            st.staged = _Staged(version, patch, weights, bases)
        except Exception as e:
            return _fail("ROLLBACK_FAILED", f"{type(e).__name__}: {e}")
        res = self.factpatch_commit(version)
        st.previous = None
        return res

    def factpatch_state(self) -> dict[str, Any]:
        st = self._fp()
        from vllm.distributed import get_tensor_model_parallel_rank

        held = sum(t.numel() * t.element_size() for t in st.bases.values())
        factors = 0
        if st.patch is not None:
            factors = sum(u.numel() * 4 + v.numel() * 4 for u, v in st.patch.factors.values())
        return {
            "rank": self._fp_rank(),
            "tp_rank": int(get_tensor_model_parallel_rank()),
            "active_version": st.version,
            "applied_at": st.applied_at,
            "bytes_held": held,
            "factor_bytes": factors,
            "patched_modules": sorted(st.bases),
            "writer": st.writer.name,
        }
