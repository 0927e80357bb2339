"""Bearer-token check for the agent routes.

The tokens come from `FACTPATCH_AGENT_TOKEN` (one), or from the file named by
`FACTPATCH_AGENT_TOKEN_FILE` (one per line, every line accepted: rotation with an overlap window; the
file is re-read on every request, so rotating needs no restart). With no token configured, or only
a weak one (empty, whitespace, a placeholder, short: `core.tokens.weakness`), every agent route
answers 401: an unprotected weight-writing endpoint is never the fallback.
"""

from __future__ import annotations

import hmac
import os

from factpatch.core.tokens import WeakTokenError, check, read_token_file

TOKEN_ENV = "FACTPATCH_AGENT_TOKEN"
TOKEN_FILE_ENV = "FACTPATCH_AGENT_TOKEN_FILE"


def configured_tokens(env: dict[str, str] | None = None) -> list[str]:
    """The accepted tokens; WeakTokenError says why there are none usable."""
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV) is not None and env.get(TOKEN_ENV) != "":
        return [check(env[TOKEN_ENV], f"${TOKEN_ENV}")]
    if env.get(TOKEN_FILE_ENV):
        return read_token_file(env[TOKEN_FILE_ENV], f"${TOKEN_FILE_ENV}")
    raise WeakTokenError(f"no agent token configured: set {TOKEN_ENV} or {TOKEN_FILE_ENV}")


def check_bearer(authorization: str | None) -> str | None:
    """None when the header carries a configured token, else why not."""
    try:
        expected = configured_tokens()
    except WeakTokenError as e:
        return f"this shard has no usable agent token ({e})"
    if not authorization:
        return "missing Authorization header"
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return "Authorization must be 'Bearer <token>'"
    # Exact bytes: no stripping, so whitespace (ASCII or not) can never stand in for a token.
    matches = [hmac.compare_digest(given.encode("utf-8", "replace"), t.encode()) for t in expected]
    return None if any(matches) else "wrong token"
