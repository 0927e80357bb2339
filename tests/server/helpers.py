"""Helpers for control-plane tests: token files, random test patches, stubs with metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

from factpatch.server.cli.client import Client, new_request_id  # noqa: F401  (tests import Client from here)
from tests.factories import random_patch  # noqa: F401  (tests import it from here)

OPERATOR_TOKEN = "op-Q7fK2d9xLm4Tz8Rb1Vn6Wc3Yh5Ja0Ps"
VIEWER_TOKEN = "view-G4hN8sE1uR6pK3wT9cZ2mB7qV5xLd"
AGENT_TOKEN = "agent-Y2vH7nC4kP9sM1xF6tR3wJ8bD5qLz"
GATEWAY_TOKEN = "gw-R8mT3vK6pX1qZ9dN4sW7cH2bF5jLy0"


def write_tokens(path: Path) -> Path:
    path.write_text(
        "- {principal: release-bot, role: operator, token: %s}\n"
        "- {principal: dashboard, role: viewer, token_sha256: %s}\n"
        "- {principal: gateway-fleet, role: gateway, token: %s}\n"
        % (OPERATOR_TOKEN, hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest(), GATEWAY_TOKEN)
    )
    return path


def rid() -> str:
    return new_request_id()


def budget_in(last_swap: dict) -> float:
    """The drain budget a shard's last swap was given (a setting it echoes back, not a time it measured)."""
    return last_swap["drain_timeout_s"]
