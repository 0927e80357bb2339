"""Helpers for control-plane tests: token files, random test patches, stubs with metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from factpatch.core import patchfile
from factpatch.server.cli.client import Client, new_request_id  # noqa: F401  (tests import Client from here)

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
    return new_request_id()


def budget_in(last_swap: dict) -> float:
    """The drain budget a shard's last swap was given (a setting it echoes back, not a time it measured)."""
    return last_swap["drain_timeout_s"]
