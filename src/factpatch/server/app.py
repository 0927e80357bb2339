"""Assembles the control plane: state, store, reconciler, servicers, health, reflection, TLS, and
the gateway with its monitors, metrics and canary analysis."""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from factpatch.core.shard_endpoints import ShardEndpoints
from factpatch.core.signing import TrustedKeys
from factpatch.server.api.auth import ClientTokensFile, operator_token_check
from factpatch.server.api.context import ControlPlane
from factpatch.server.api.idempotency import Idempotency
from factpatch.server.api.interceptor import Pipeline
from factpatch.server.api.services.audit import AuditService
from factpatch.server.api.services.fleet import FleetService
from factpatch.server.api.services.gateway import GatewayService
from factpatch.server.api.services.monitors import MonitorService
from factpatch.server.api.services.patches import PatchService
from factpatch.server.api.services.probes import ProbeService
from factpatch.server.api.services.rollouts import RolloutService
from factpatch.server.api.stream_slots import StreamSlots
from factpatch.server.control.agent_client import agent_tls_context
from factpatch.server.control.agent_token import AgentToken
from factpatch.server.control.analysis import Analyzer, Observations
from factpatch.server.control.basecheck import BaseChecker
from factpatch.server.control.gateway_fleet import RemoteGateways
from factpatch.server.control.operations import EditorOperations
from factpatch.server.control.prometheus_gate import PrometheusQueries
from factpatch.server.control.reconciler import Reconciler
from factpatch.server.control.shard_addresses import ShardAddressPolicy
from factpatch.server.gateway.app import Gateway, GatewayConfig
from factpatch.server.gateway.routing import Router, SwapTracker
from factpatch.server.gateway.state_follower import StateFollower
from factpatch.server.metrics import Metrics
from factpatch.server.monitors import config as monitors_config
from factpatch.server.monitors.registry import MonitorRegistry
from factpatch.server.probes import config as probes_config
from factpatch.server.probes.metrics import ProbeMetrics
from factpatch.server.probes.runner import Prober
from factpatch.server.probes.weight_change import PatchSizes
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database
from factpatch.server.state.dir_lock import StateDirLock
from factpatch.server.state.store import PatchStore
from factpatch.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    patch_pb2,
    patch_pb2_grpc,
    probe_pb2,
    probe_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
)

log = logging.getLogger("factpatch.server")

SERVICE_NAMES = (
    patch_pb2.DESCRIPTOR.services_by_name["PatchService"].full_name,
    fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name,
    rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name,
    monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
    probe_pb2.DESCRIPTOR.services_by_name["ProbeService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
)


@dataclass
class ServeConfig:
    state_dir: Path
    listen: str = "127.0.0.1:50051"
    tokens_file: Path | None = None
    agent_token: str = ""
    agent_token_file: Path | None = None  # read again before every agent call (rotation without a restart)
    agent_token_dir: Path | None = None  # per-shard tokens: a file named after the shard overrides the above
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # With a client CA, clients must present a certificate it signed (mTLS).
    tls_client_ca: Path | None = None
    # Agents that speak HTTPS: the CA their certificates chain to, and the client certificate shown to
    # agents that require one (mutual TLS).
    agent_ca: Path | None = None
    agent_client_cert: Path | None = None
    agent_client_key: Path | None = None
    # Patch signatures: public keys (PEM files or folders) whose signatures are accepted, and whether an
    # unsigned patch is refused at import.
    trusted_keys: list[Path] = field(default_factory=list)
    require_signatures: bool = False
    base_dirs: list[Path] = field(default_factory=list)
    editor_model: Path | None = None
    reconcile_interval: float = 1.0
    # seconds a weight change waits for running requests before cutting them off (None: 30 s at the
    # gateway, each shard's own setting in its engine)
    drain_timeout_s: float | None = None
    max_patch_bytes: int = 256 << 20
    # ‖ΔW‖/‖W‖ cap per tensor, checked at import when a --base-dir holds the patch's base
    max_weight_change: float | None = None
    # registered at start if absent: NAME -> "URL" or "URL,AGENT_URL" (core/shard_endpoints.py)
    shards: dict[str, str] = field(default_factory=dict)
    # RegisterShard accepts only these (networks, hosts, host:port, *.domain); empty: loopback only
    allowed_shard_addresses: list[str] = field(default_factory=list)
    workers: int = 32
    # the OpenAI gateway in this process (None: none here; gateway processes watch the routing state,
    # and without any, canary analysis has no data and pauses)
    gateway: GatewayConfig | None = None
    # /metrics without an in-process gateway (host:port); with one, GatewayConfig.metrics_listen
    metrics_listen: str | None = None
    monitors_file: Path | None = None
    # live edit probes (None: off; the ProbeService then answers FAILED_PRECONDITION / PROBES_DISABLED)
    probes_file: Path | None = None
    # the Prometheus that answers analysis gates of metric "prometheus" (None: such gates are refused)
    prometheus_url: str | None = None


class ControlPlaneServer:
    def __init__(self, cfg: ServeConfig):
        agent_token = AgentToken(cfg.agent_token, cfg.agent_token_file, cfg.agent_token_dir)  # refuses missing or weak
        if cfg.require_signatures and not cfg.trusted_keys:
            raise ValueError("--require-signatures needs at least one --trusted-key")
        if cfg.tokens_file is None:
            raise ValueError("no client tokens: pass --client-tokens-file (a list of {principal, role, token})")
        self.cfg = cfg
        tokens = ClientTokensFile(cfg.tokens_file)  # read again when it changes: rotation needs no restart
        self.state_lock = StateDirLock(cfg.state_dir).acquire()  # before anything reads or writes the state
        try:
            self._assemble(cfg, tokens, agent_token)
        except BaseException:
            self.state_lock.release()  # a refused start leaves the directory free for the next try
            raise

    def _assemble(self, cfg: ServeConfig, tokens: ClientTokensFile, agent_token: AgentToken) -> None:
        endpoints = {name: ShardEndpoints.parse(text) for name, text in cfg.shards.items()}
        db = Database(cfg.state_dir / "state.db")
        store = PatchStore(cfg.state_dir / "patches")
        store.clean(db.patch_digests())
        audit = AuditLog(db)
        audit.settle_interrupted()  # before anything new is written: what a crash left PENDING
        lock = threading.RLock()
        reconciler = Reconciler(db, store, audit, agent_token, lock, interval=cfg.reconcile_interval,
                                drain_timeout_s=cfg.drain_timeout_s,
                                agent_tls=agent_tls_context(cfg.agent_ca, cfg.agent_client_cert, cfg.agent_client_key))
        self.cp = ControlPlane(
            db=db, store=store, audit=audit, idempotency=Idempotency(db), reconciler=reconciler,
            basecheck=BaseChecker(cfg.base_dirs), operations=None, mutation_lock=lock,  # type: ignore[arg-type]
            max_patch_bytes=cfg.max_patch_bytes, max_weight_change=cfg.max_weight_change,
            shard_addresses=ShardAddressPolicy.from_entries(
                cfg.allowed_shard_addresses, [a for e in endpoints.values() for a in (e.address, e.agent_address)]),
            trusted_keys=TrustedKeys.load(cfg.trusted_keys), require_signatures=cfg.require_signatures,
            prometheus=PrometheusQueries(cfg.prometheus_url) if cfg.prometheus_url else None,
        )
        patches = PatchService(self.cp)
        self.cp.operations = EditorOperations(cfg.editor_model, patches.store_patch)
        for name, e in endpoints.items():
            if db.shard(name) is None:
                db.add_shard(name, e.address, e.agent_address)

        monitors_cfg = monitors_config.load(cfg.monitors_file)
        self.metrics = Metrics(monitor_label_limit=monitors_cfg.max_monitor_labels)
        def monitors_changed(c) -> None:
            self.metrics.monitor_counts.activate((m.name, m.scope_subject.lower()) for m in c.monitors)
            db.nudge()  # gateway processes' routing watches send the new set now

        self.monitors = MonitorRegistry(db, monitors_cfg, on_change=monitors_changed)
        self.prober: Prober | None = None
        if cfg.probes_file:
            probe_metrics = ProbeMetrics(self.metrics.registry)
            self.prober = Prober(db, probes_config.load(cfg.probes_file), PatchSizes(store, self.cp.basecheck),
                                 reconciler.client, on_result=probe_metrics.record)
            probe_metrics.attach(self.prober)
        self.observations = Observations()
        swaps = SwapTracker()
        reconciler.swaps, reconciler.metrics = swaps, self.metrics
        if self.prober:
            self.prober.swaps = swaps
            reconciler.probe_conditions = lambda: self.prober.snapshot()[1]
        reconciler.analyzer = Analyzer(db, self.observations, self._stale_scopes, self.metrics, self.cp.prometheus)
        # Gateway processes (`factpatch gateway`) watch the routing state and report their traffic.
        self.remote_gateways = RemoteGateways()
        swaps.remote, swaps.on_change = self.remote_gateways, db.nudge
        self.gateway_service = GatewayService(db, swaps, self.monitors, self.observations, self.remote_gateways)
        # The routing view: the in-process gateway routes by it; the shard and split gauges read it
        # whether or not this process serves a gateway.
        self.router = Router(db, swaps)
        self.follower = StateFollower(db, self.router, self.monitors)
        self.gateway = Gateway(cfg.gateway, self.router, self.monitors, self.metrics, self.observations,
                               may_force_route=operator_token_check(tokens)) if cfg.gateway else None
        self.metrics.sources(
            shards=self.router.shards,
            rollouts=lambda: [(r, self._canary_share(r)) for r in db.rollouts(limit=50)],
            monitor_count=lambda: len(self.monitors.compiled),
            versions=lambda: [r["digest"] for r in db.q("SELECT digest FROM patches ORDER BY digest")],
            client_tokens=tokens.state,
        )

        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="grpc"),
            interceptors=[Pipeline(tokens, audit, self.cp.idempotency, lock, StreamSlots(cfg.workers))],
            options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)],
        )
        patch_pb2_grpc.add_PatchServiceServicer_to_server(patches, self.server)
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(FleetService(self.cp), self.server)
        rollout_pb2_grpc.add_RolloutServiceServicer_to_server(RolloutService(self.cp), self.server)
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(MonitorService(self.monitors), self.server)
        probe_pb2_grpc.add_ProbeServiceServicer_to_server(ProbeService(self.prober), self.server)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditService(self.cp.audit), self.server)
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(self.gateway_service, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self._bind()
        self._metrics_server = None
        self.metrics_port: int | None = None

    def _stale_scopes(self, digest: str) -> dict[str, str]:
        return {m.name: m.scope_subject.lower() for m in self.monitors.stale_for_patch(digest)}

    def _canary_share(self, r) -> float | None:
        split = self.router.table.split_of(r.id)
        return split.canary_share if split is not None else None

    def _bind(self) -> int:
        cfg = self.cfg
        if cfg.tls_cert or cfg.tls_key:
            if not (cfg.tls_cert and cfg.tls_key):
                raise ValueError("TLS needs both --tls-cert and --tls-key")
            ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
            creds = grpc.ssl_server_credentials(
                [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
                root_certificates=ca, require_client_auth=ca is not None,
            )
            port = self.server.add_secure_port(cfg.listen, creds)
        else:
            port = self.server.add_insecure_port(cfg.listen)
        if not port:
            raise OSError(f"could not listen on {cfg.listen}")
        return port

    def start(self) -> None:
        self.cp.basecheck.warm()
        self.follower.start()
        if self.gateway:
            self.gateway.start()
            log.info("gateway listening on port %d", self.gateway.port)
        elif self.cfg.metrics_listen:
            host, _, port = self.cfg.metrics_listen.rpartition(":")
            self._metrics_server, _ = start_http_server(int(port), host.strip("[]") or "0.0.0.0",
                                                        registry=self.metrics.registry)
            self.metrics_port = self._metrics_server.server_port
            log.info("/metrics on port %d", self.metrics_port)
        self.server.start()
        self.cp.reconciler.start()
        if self.prober:
            self.prober.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("control plane listening on port %d", self.port)

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.cp.reconciler.stop()
        if self.prober:
            self.prober.stop()
        if self.gateway:
            self.gateway.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.follower.stop()
        self.cp.operations.shutdown()
        self.cp.audit.flush_refusals()
        self.cp.db.close()
        self.state_lock.release()

    def serve_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        port_file = os.environ.get("FACTPATCH_PORT_FILE")
        if port_file:  # lets a supervisor (or a test) find a port chosen with :0
            Path(port_file).write_text(str(self.port))
        gateway_port_file = os.environ.get("FACTPATCH_GATEWAY_PORT_FILE")
        if gateway_port_file and self.gateway:
            Path(gateway_port_file).write_text(str(self.gateway.port))
        done.wait()
        self.stop()
