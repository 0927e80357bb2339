"""Client authentication and roles.

Tokens come from a YAML/JSON file: a list of `{principal, role, token}` or `{principal, role,
token_sha256}` (so the file need not hold the secret itself). Roles: `viewer` may call read methods,
`operator` may call everything; `gateway` (for `factpatch gateway` processes) may call the
GatewayService and nothing else, which operators may call too. Shard agent tokens are a separate secret (see agent_client.py) and are
never accepted here.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from factpatch.core.tokens import weakness

log = logging.getLogger("factpatch.auth")

VIEWER = "viewer"
OPERATOR = "operator"
GATEWAY = "gateway"
ROLES = {VIEWER: 0, OPERATOR: 1}  # ranked: a higher role may do what a lower one may
TOKEN_ROLES = (*ROLES, GATEWAY)
GATEWAY_PREFIX = "/factpatch.v1.GatewayService/"

# Open to anyone: probes and tooling discovery carry no secrets.
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")

READ_METHODS = frozenset(
    "/factpatch.v1." + m
    for m in (
        "PatchService/GetOperation",
        "PatchService/GetPatch",
        "PatchService/ListPatches",
        "PatchService/GetPatchBlob",
        "FleetService/ListShards",
        "FleetService/GetShard",
        "RolloutService/GetRollout",
        "RolloutService/ListRollouts",
        "RolloutService/WatchRollout",
        "RolloutService/ListReleases",
        "MonitorService/ListMonitors",
        "ProbeService/GetProbeReport",
        "ProbeService/GetProbeSet",
    )
)


# Operator methods that change no state: audited, but run outside the mutation lock (a probe run
# takes seconds and must not hold up rollouts).
UNLOCKED_METHODS = frozenset({
    "/factpatch.v1.ProbeService/RunProbes",
    # Operator-only reads: who looks at the audit log is itself on record.
    "/factpatch.v1.AuditService/ListAuditRecords",
    "/factpatch.v1.AuditService/VerifyAuditLog",
})


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


ANONYMOUS = Principal("anonymous", "")


def required_role(method: str) -> str | None:
    """None for public methods; anything not known to be a read needs an operator."""
    if method.startswith(PUBLIC_PREFIXES):
        return None
    if method.startswith(GATEWAY_PREFIX):
        return GATEWAY
    return VIEWER if method in READ_METHODS else OPERATOR


def allowed(principal: Principal, role: str) -> bool:
    if role == GATEWAY:
        return principal.role in (GATEWAY, OPERATOR)
    return principal.role in ROLES and ROLES[principal.role] >= ROLES[role]


class TokenTable:
    def __init__(self, entries: list[dict]):
        self._by_hash: dict[str, Principal] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise ValueError(f"token entry {i}: must be a mapping of principal, role and token, got {type(e).__name__}")
            role = e.get("role")
            if role not in TOKEN_ROLES:
                raise ValueError(f"token entry {i}: role must be one of {sorted(TOKEN_ROLES)}, got {role!r}")
            name = e.get("principal") or f"token-{i}"
            if e.get("token") is not None:
                why = weakness(str(e["token"]))
                if why:
                    raise ValueError(f"token entry {i} ({name}): refused, {why}")
                h = hashlib.sha256(str(e["token"]).encode()).hexdigest()
            elif e.get("token_sha256"):
                h = str(e["token_sha256"]).lower()
                if not re.fullmatch(r"[0-9a-f]{64}", h):
                    raise ValueError(f"token entry {i} ({name}): token_sha256 must be 64 hex digits")
            else:
                raise ValueError(f"token entry {i} ({name}): needs 'token' or 'token_sha256'")
            self._by_hash[h] = Principal(name, role)

    @classmethod
    def from_file(cls, path: str | Path) -> "TokenTable":
        data = yaml.safe_load(Path(path).read_text()) or []
        if isinstance(data, dict):
            data = data.get("tokens", [])
        if not isinstance(data, list):
            raise ValueError(f"{path}: must hold a list of token entries (or a mapping with 'tokens'), got {type(data).__name__}")
        return cls(data)

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization[len("Bearer "):]
        if weakness(given):  # exact bytes, never stripped: whitespace cannot stand in for a token
            return None
        h = hashlib.sha256(given.encode()).hexdigest()
        for known, principal in self._by_hash.items():
            if hmac.compare_digest(known, h):
                return principal
        return None


class ClientTokensFile:
    """A client tokens file read again whenever it changes on disk (size, mtime or inode), so adding,
    rotating or revoking a client token needs no restart. A file that is wrong at start is refused
    (ValueError naming the entry); one that turns wrong later keeps the last good table and logs why,
    once per version of the file — a typo never locks every client out.

        tokens = ClientTokensFile("tokens.yaml")
        principal = tokens.authenticate(metadata.get("authorization"))
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen = self._signature()
        self._table = TokenTable.from_file(self.path)
        self.valid = True  # whether the file's current version was read (False: an earlier one is in use)

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def table(self) -> TokenTable:
        seen = self._signature()
        if seen == self._seen:
            return self._table
        with self._lock:
            if seen != self._seen:
                self._seen = seen
                try:
                    self._table = TokenTable.from_file(self.path)
                    self.valid = True
                    log.info("client tokens file %s read again: %d tokens", self.path, len(self._table))
                except (OSError, ValueError, yaml.YAMLError) as e:
                    self.valid = False
                    why = getattr(e, "strerror", None) or str(e)
                    log.error("client tokens file %s: %s; still accepting the tokens it held before", self.path, why)
        return self._table

    def state(self) -> tuple[bool, int]:
        """(whether the file as it is now was read, tokens accepted), the file looked at again first:
        what /metrics exports, so a broken file shows even while no client calls."""
        accepted = len(self.table())
        return self.valid, accepted

    def authenticate(self, authorization: str | None) -> Principal | None:
        return self.table().authenticate(authorization)


def operator_token_check(tokens: TokenTable | ClientTokensFile) -> Callable[[str | None], bool]:
    """Whether a bare token (not an Authorization header) is an operator's."""
    def check(token: str | None) -> bool:
        principal = tokens.authenticate(f"Bearer {token}") if token else None
        return principal is not None and allowed(principal, OPERATOR)
    return check
