"""A small Python client of the control plane: its service stubs with the bearer token attached."""

from __future__ import annotations

import hashlib
import uuid

import grpc

from factpatch.v1 import (
    audit_pb2_grpc,
    fleet_pb2_grpc,
    gateway_pb2_grpc,
    patch_pb2,
    patch_pb2_grpc,
    probe_pb2_grpc,
    rollout_pb2_grpc,
)


def new_request_id() -> str:
    return uuid.uuid4().hex


class Client:
    def __init__(self, target: str, token: str | None):
        self.channel = grpc.insecure_channel(target)
        self.md = (("authorization", f"Bearer {token}"),) if token else ()
        self.patches = patch_pb2_grpc.PatchServiceStub(self.channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)
        self.rollouts = rollout_pb2_grpc.RolloutServiceStub(self.channel)
        self.probes = probe_pb2_grpc.ProbeServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.gateways = gateway_pb2_grpc.GatewayServiceStub(self.channel)

    def __call__(self, method, request, timeout: float = 30):
        return method(request, metadata=self.md, timeout=timeout)

    def push(self, data: bytes, expected: str | None = None, request_id: str | None = None, size: int | None = None,
             chunk: int = 1 << 16, signature: bytes | None = None):
        """ImportPatch as a stream of chunks after a header that states digest, size and signature."""
        header = patch_pb2.ImportPatchHeader(
            request_id=request_id or new_request_id(),
            expected_digest="sha256:" + hashlib.sha256(data).hexdigest() if expected is None else expected,
            size_bytes=len(data) if size is None else size, signature=signature or b"",
        )

        def parts():
            yield patch_pb2.ImportPatchRequest(header=header)
            for i in range(0, len(data), chunk):
                yield patch_pb2.ImportPatchRequest(chunk=data[i:i + chunk])

        return self.patches.ImportPatch(parts(), metadata=self.md, timeout=30)

    def close(self):
        self.channel.close()
