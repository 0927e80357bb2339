"""What the servicers share: state, store, audit log, reconciler, settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from factpatch.server.audit import AuditLog
from factpatch.server.basecheck import BaseChecker
from factpatch.server.db import Database
from factpatch.server.idempotency import Idempotency
from factpatch.server.operations import EditorOperations
from factpatch.server.reconciler import Reconciler
from factpatch.server.store import PatchStore


@dataclass
class ControlPlane:
    db: Database
    store: PatchStore
    audit: AuditLog
    idempotency: Idempotency
    reconciler: Reconciler
    basecheck: BaseChecker
    operations: EditorOperations
    mutation_lock: threading.RLock
    max_patch_bytes: int = 256 << 20
