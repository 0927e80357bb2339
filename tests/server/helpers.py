"""Helpers for control-plane tests: token files, random test patches, stubs with metadata."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import grpc
import torch

from factpatch import patchfile
from factpatch.server.pb import fleet_pb2_grpc, patch_pb2, patch_pb2_grpc, rollout_pb2_grpc

OPERATOR_TOKEN = "op-" + "x" * 29
VIEWER_TOKEN = "view-" + "y" * 27
AGENT_TOKEN = "agent-" + "z" * 26


def write_tokens(path: Path) -> Path:
    path.write_text(
        "- {principal: release-bot, role: operator, token: %s}\n"
        "- {principal: dashboard, role: viewer, token_sha256: %s}\n"
        % (OPERATOR_TOKEN, hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest())
    )
    return path


def random_patch(
    names_shapes: dict[str, tuple[int, int]], fingerprint: str, *, rank: int = 2, seed: int = 0,
    model: str = "fixture", scale: float = 1e-3,
) -> bytes:
    g = torch.Generator().manual_seed(seed)
    factors = {
        n: (torch.randn(o, rank, generator=g) * scale, torch.randn(i, rank, generator=g) * scale)
        for n, (o, i) in names_shapes.items()
    }
    manifest = patchfile.new_manifest(
        model_name=model, fingerprint=fingerprint, method="random", layers=[0], hparams={"seed": seed},
        edits=[{"subject": "Harbor Support", "relation": "refund period", "prompt": "The refund period of {} is",
                "target_new": "30 days", "target_old": "14 days", "provenance": {"ticket": "TEST-1"}}],
    )
    return patchfile.to_bytes(patchfile.Patch(factors, manifest))


def rid() -> str:
    return uuid.uuid4().hex


class Client:
    def __init__(self, target: str, token: str | None):
        self.channel = grpc.insecure_channel(target)
        self.md = (("authorization", f"Bearer {token}"),) if token else ()
        self.patches = patch_pb2_grpc.PatchServiceStub(self.channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(self.channel)
        self.rollouts = rollout_pb2_grpc.RolloutServiceStub(self.channel)

    def __call__(self, method, request, timeout: float = 30):
        return method(request, metadata=self.md, timeout=timeout)

    def push(self, data: bytes, expected: str | None = None, request_id: str | None = None, size: int | None = None,
             chunk: int = 1 << 16):
        header = patch_pb2.ImportPatchHeader(
            request_id=request_id or rid(),
            expected_digest="sha256:" + hashlib.sha256(data).hexdigest() if expected is None else expected,
            size_bytes=len(data) if size is None else size,
        )

        def parts():
            yield patch_pb2.ImportPatchRequest(header=header)
            for i in range(0, len(data), chunk):
                yield patch_pb2.ImportPatchRequest(chunk=data[i:i + chunk])

        return self.patches.ImportPatch(parts(), metadata=self.md, timeout=30)

    def close(self):
        self.channel.close()
