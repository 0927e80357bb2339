"""What the servicers share: state, store, audit log, reconciler, settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from factpatch.core.signing import TrustedKeys
from factpatch.server.api.idempotency import Idempotency
from factpatch.server.control.basecheck import BaseChecker
from factpatch.server.control.operations import EditorOperations
from factpatch.server.control.prometheus_gate import PrometheusQueries
from factpatch.server.control.reconciler import Reconciler
from factpatch.server.control.shard_addresses import ShardAddressPolicy
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database
from factpatch.server.state.store import PatchStore


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
    # ‖ΔW‖/‖W‖ cap checked at import against a local copy of the patch's base (None: shards alone check)
    max_weight_change: float | None = None
    shard_addresses: ShardAddressPolicy = field(default_factory=lambda: ShardAddressPolicy.from_entries([]))
    # public keys whose patch signatures are accepted, and whether an unsigned patch is refused
    trusted_keys: TrustedKeys = field(default_factory=lambda: TrustedKeys([]))
    require_signatures: bool = False
    # answers analysis gates of metric "prometheus" (serve --prometheus-url); None: such gates are refused
    prometheus: PrometheusQueries | None = None
