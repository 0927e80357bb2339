"""Bearer-token check for the agent routes.

The token comes from `FACTPATCH_AGENT_TOKEN`, or from the file named by `FACTPATCH_AGENT_TOKEN_FILE`
(re-read on every request so it can be rotated without a restart). With no token configured every
agent route answers 401: an unprotected weight-writing endpoint is never the fallback.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

TOKEN_ENV = "FACTPATCH_AGENT_TOKEN"
TOKEN_FILE_ENV = "FACTPATCH_AGENT_TOKEN_FILE"


def configured_token() -> str | None:
    tok = os.environ.get(TOKEN_ENV)
    if tok:
        return tok.strip()
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            tok = Path(path).read_text().strip()
        except OSError:
            return None
        return tok or None
    return None


def check_bearer(authorization: str | None) -> str | None:
    """None when the header carries the configured token, else why not."""
    expected = configured_token()
    if expected is None:
        return "this shard has no agent token configured"
    if not authorization:
        return "missing Authorization header"
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return "Authorization must be 'Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        return "wrong token"
    return None
