"""What every `factpatch ctl` command runs on: the channel with its credentials, retries and exit codes."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import typer
import yaml
from google.protobuf.json_format import MessageToDict
from rich.console import Console

from factpatch.core.tokens import token_lines
from factpatch.server.api.errors import reason_of
from factpatch.v1 import audit_pb2_grpc, fleet_pb2_grpc, patch_pb2_grpc, rollout_pb2_grpc

EXIT = {
    grpc.StatusCode.INVALID_ARGUMENT: 2, grpc.StatusCode.OUT_OF_RANGE: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.FAILED_PRECONDITION: 4, grpc.StatusCode.ALREADY_EXISTS: 4, grpc.StatusCode.ABORTED: 4,
    grpc.StatusCode.UNAUTHENTICATED: 5, grpc.StatusCode.PERMISSION_DENIED: 5,
    grpc.StatusCode.UNAVAILABLE: 6, grpc.StatusCode.DEADLINE_EXCEEDED: 6,
}
err_console = Console(stderr=True)


# Retries of UNAVAILABLE by the gRPC library, with exponential backoff and jitter (its service config):
# every read is safe to repeat, and every mutation carries a request id the server answers once.
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": f"factpatch.v1.{s}"} for s in
             ("PatchService", "FleetService", "RolloutService", "ProbeService", "AuditService", "MonitorService")],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})
OUTPUTS = ("table", "json", "yaml")
CHANNEL_OPTIONS = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_SERVICE_CONFIG)]


def control_plane_channel(address: str, tls_ca: Path | None = None, tls_cert: Path | None = None,
                          tls_key: Path | None = None) -> grpc.Channel:
    """A channel to the control plane: TLS when a CA is given (mTLS with a client certificate), with the
    retry policy above."""
    if tls_ca:
        creds = grpc.ssl_channel_credentials(
            tls_ca.read_bytes(), tls_key.read_bytes() if tls_key else None, tls_cert.read_bytes() if tls_cert else None
        )
        return grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def bearer_token(token_file: Path | None, token: str) -> str:
    """The first token in `token_file` when one is given, else `token`."""
    if token_file:
        lines = token_lines(token_file.read_text())
        if not lines:
            raise typer.BadParameter(f"{token_file} holds no token", param_hint="--token-file")
        return lines[0][1]
    return token


@dataclass
class Ctx:
    channel: grpc.Channel
    metadata: tuple
    timeout: float
    output: str  # table, json or yaml (-o)
    request_id: str = ""  # --request-id: what this command's mutation sends, so a re-run changes nothing

    @property
    def patches(self):
        return patch_pb2_grpc.PatchServiceStub(self.channel)

    @property
    def fleet(self):
        return fleet_pb2_grpc.FleetServiceStub(self.channel)

    @property
    def rollouts(self):
        return rollout_pb2_grpc.RolloutServiceStub(self.channel)

    @property
    def audit(self):
        return audit_pb2_grpc.AuditServiceStub(self.channel)

    def call(self, fn, request, *, timeout: float | None = None):
        """A unary call (retried by the channel, see RETRY_SERVICE_CONFIG); an error exits with its code."""
        try:
            return fn(request, metadata=self.metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            fail(e, self.machine_readable)

    def rid(self) -> str:
        """The request id of this command's mutation: --request-id, or a fresh one."""
        return self.request_id or uuid.uuid4().hex

    @property
    def machine_readable(self) -> bool:
        """json or yaml output: progress lines are left out, errors go out as JSON."""
        return self.output != "table"

    def out(self, msg, render=None) -> None:
        data = MessageToDict(msg, preserving_proto_field_name=True)
        if self.output == "yaml":
            print(yaml.safe_dump(data, sort_keys=False), end="")
        elif self.output == "json" or render is None:
            print(json.dumps(data, indent=2))
        else:
            render(msg)


def fail(e: grpc.RpcError, as_json: bool):
    reason = reason_of(e)
    if as_json:
        print(json.dumps({"error": {"code": e.code().name, "reason": reason, "message": e.details()}}), file=sys.stderr)
    else:
        err_console.print(f"[red]{e.code().name}/{reason or '-'}[/red]: {e.details()}")
    raise typer.Exit(EXIT.get(e.code(), 1))
