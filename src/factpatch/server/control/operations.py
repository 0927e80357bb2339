"""Long-running CreatePatch operations: the editor runs in a worker thread, one edit at a time
(an edit uses every core it gets), and reports its stage and progress here.

Operations live in memory: after a restart an unfinished one is gone (its request id can be sent
again), while every finished patch is already in the store.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("factpatch.operations")


@dataclass
class OperationState:
    name: str
    stage: str = "queued"
    progress: float = 0.0
    message: str = ""
    done: bool = False
    digest: str | None = None
    error_reason: str = ""
    error: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


# Share of the whole operation each editor stage stands for, for a single progress number.
_STAGES = {"covariance": (0.0, 0.4), "edits": (0.4, 0.8), "layers": (0.4, 0.8), "evaluation": (0.8, 1.0)}


class EditorOperations:
    def __init__(self, model_dir: str | Path | None, store_patch: Callable[[bytes, str], str]):
        self.model_dir = Path(model_dir) if model_dir else None
        self._store_patch = store_patch  # (bytes, principal) -> digest
        self._ops: dict[str, OperationState] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="editor")
        self._loaded = None

    def available(self) -> str | None:
        """None when CreatePatch can run, else why not."""
        if self.model_dir is None:
            return "the control plane was started without --editor-model (the base checkpoint the editor edits)"
        try:
            import factpatch.editor.pipeline  # noqa: F401
        except ImportError as e:
            return f"the editor cannot be imported here: {e}"
        return None

    def get(self, name: str) -> OperationState | None:
        with self._lock:
            return self._ops.get(name)

    def _update(self, op: OperationState, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(op, k, v)
            op.updated = time.time()

    def submit(self, edits, method: str, principal: str) -> OperationState:
        op = OperationState(name="operations/" + uuid.uuid4().hex[:16])
        with self._lock:
            self._ops[op.name] = op
        self._pool.submit(self._run, op, edits, method, principal)
        return op

    def _run(self, op: OperationState, edits, method: str, principal: str) -> None:
        from factpatch.core.patchfile import to_bytes
        from factpatch.editor import pipeline

        def progress(stage: str, i: int, n: int) -> None:
            lo, hi = _STAGES.get(stage, (0.0, 1.0))
            self._update(op, stage=stage, progress=lo + (hi - lo) * (i / max(n, 1)), message=f"{stage} {i}/{n}")

        try:
            if self._loaded is None:
                self._update(op, stage="loading", message=f"loading {self.model_dir}")
                self._loaded = pipeline.load(self.model_dir)
            opts = pipeline.EditOptions(method=method or "memit")
            self._update(op, stage="covariance", message="second moments of the edited layers")
            result = pipeline.run_edit(self._loaded, edits, opts, on_progress=progress)
            self._update(op, stage="evaluation", progress=0.8, message="efficacy and specificity")
            result.patch.manifest["eval"] = pipeline.evaluate_patch(self._loaded, result.patch, edits, [])
            digest = self._store_patch(to_bytes(result.patch), principal)
            self._update(op, stage="done", progress=1.0, done=True, digest=digest, message="patch stored")
        except Exception as e:  # the operation reports it; the server keeps running
            log.exception("CreatePatch %s failed", op.name)
            reason = "INVALID_EDIT" if type(e).__name__ in ("EditInputError", "SpecError") else "EDITOR_FAILED"
            self._update(op, stage="failed", done=True, error_reason=reason, error=f"{type(e).__name__}: {e}")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
