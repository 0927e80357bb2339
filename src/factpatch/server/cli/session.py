"""What every `factpatch ctl` command runs on: the channel with its credentials, retries and exit codes."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console

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


@dataclass
class Ctx:
    channel: grpc.Channel
    metadata: tuple
    timeout: float
    as_json: bool

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
        """A unary call; mutating requests keep one request id across retries of UNAVAILABLE."""
        for attempt in range(3):
            try:
                return fn(request, metadata=self.metadata, timeout=timeout or self.timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2 or not getattr(request, "request_id", ""):
                    fail(e, self.as_json)

    def out(self, msg, render=None) -> None:
        if self.as_json or render is None:
            print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True), indent=2))
        else:
            render(msg)


def fail(e: grpc.RpcError, as_json: bool):
    reason = reason_of(e)
    if as_json:
        print(json.dumps({"error": {"code": e.code().name, "reason": reason, "message": e.details()}}), file=sys.stderr)
    else:
        err_console.print(f"[red]{e.code().name}/{reason or '-'}[/red]: {e.details()}")
    raise typer.Exit(EXIT.get(e.code(), 1))


def rid() -> str:
    return uuid.uuid4().hex
