"""Bearer tokens: what counts as too weak to guard a weight-writing endpoint, and token files that
hold more than one token so a secret can be rotated without a restart.

A token file holds one token per line (blank lines and `#` comments ignored). Every token in it is
accepted; the first is the one a client sends. Rotation: add the new token as a second line where it
is checked (shards), then make it the first line where it is sent (the control plane), then remove
the old one — at no moment does a request carry a token its receiver does not accept.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

MIN_LENGTH = 32  # secrets.token_urlsafe(24) is 32 characters
# Values that ship in examples and documentation: accepted nowhere.
PLACEHOLDERS = ("change-me", "changeme", "replace-me", "example", "secret", "password", "token", "xxxx")
_ALLOWED = set(string.ascii_letters + string.digits + "-._~+/=")
log = logging.getLogger("factpatch.tokens")


def weakness(token: str) -> str | None:
    """Why `token` is not acceptable as a secret, or None. Never echoes the token itself."""
    if not token or not token.strip():
        return "it is empty or whitespace"
    bad = sorted({c for c in token if c not in _ALLOWED})
    if bad:
        return "it holds characters outside letters, digits and -._~+/= (whitespace, control or non-ASCII)"
    if len(token) < MIN_LENGTH:
        return f"it is {len(token)} characters; at least {MIN_LENGTH} are required (e.g. `openssl rand -base64 32`)"
    lowered = token.lower()
    for placeholder in PLACEHOLDERS:
        if placeholder in lowered and len(set(lowered.replace(placeholder, ""))) < 8:
            return f"it is a placeholder ({placeholder!r}); generate a random one"
    if len(set(token)) < 8:
        return "it repeats too few distinct characters to be random"
    return None


class WeakTokenError(ValueError):
    pass


def token_lines(text: str) -> list[tuple[int, str]]:
    """(line number, token) for every line of a token file that holds one, first one first."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def read_token_file(path: str | Path, what: str) -> list[str]:
    """The tokens in a file, first one first; WeakTokenError names the line of a weak one."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise WeakTokenError(f"{what} {path}: cannot be read ({e.strerror})") from None
    tokens = []
    for number, value in token_lines(text):
        why = weakness(value)
        if why:
            raise WeakTokenError(f"{what} {path} line {number}: refused, {why}")
        tokens.append(value)
    if not tokens:
        raise WeakTokenError(f"{what} {path}: holds no token")
    return tokens


def check(token: str, what: str) -> str:
    why = weakness(token)
    if why:
        raise WeakTokenError(f"{what}: refused, {why}")
    return token


class TokenFile:
    """The token a client sends, read again from its file at every use, so rotating it (core/tokens.py's
    order) needs no restart of the sender. A weak or missing file at the start is refused
    (WeakTokenError); later, the last good token is kept and the reason logged.

        token = TokenFile(path, "--token-file")
        metadata = (("authorization", f"Bearer {token()}"),)
    """

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        self._current = read_token_file(self.path, what)[0]

    def __call__(self) -> str:
        try:
            self._current = read_token_file(self.path, self.what)[0]
        except WeakTokenError as e:
            log.error("%s; still sending the previous token", e)
        return self._current
