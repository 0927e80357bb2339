"""The token the control plane sends to shard agents: the first line of `--agent-token-file`, else
$FACTPATCH_AGENT_TOKEN, else the first line of $FACTPATCH_AGENT_TOKEN_FILE (the shard's order). A file is
read again before every agent call so a rotation needs no restart (see core/tokens.py for the rotation
order). A weak token refuses the start; a weak or unreadable file later keeps the last good token and
logs why.

Per-shard credentials: with `--agent-token-dir DIR`, a shard named N is sent the first line of DIR/N
when that file exists (the fleet-wide token otherwise), so one leaked shard token opens one shard."""

from __future__ import annotations

import logging
from pathlib import Path

from factpatch.core.tokens import TokenFile, WeakTokenError, check, read_token_file

log = logging.getLogger("factpatch.agent_token")


class AgentToken:
    def __init__(self, token: str = "", file: Path | None = None, shard_dir: Path | None = None):
        self.shard_dir = Path(shard_dir) if shard_dir else None
        if self.shard_dir is not None:
            if not self.shard_dir.is_dir():
                raise WeakTokenError(f"--agent-token-dir {self.shard_dir}: not a folder")
            for f in sorted(self.shard_dir.iterdir()):  # every per-shard token is checked at start
                if f.is_file() and not f.name.startswith("."):
                    read_token_file(f, f"--agent-token-dir file {f.name}")
        self._per_shard: dict[str, AgentToken] = {}
        self.file = Path(file) if file else None
        if self.file is None and not token:
            raise WeakTokenError("no shard agent token: set FACTPATCH_AGENT_TOKEN or FACTPATCH_AGENT_TOKEN_FILE, "
                                 "or pass --agent-token-file")
        self._file = TokenFile(self.file, "--agent-token-file") if self.file else None
        self._fixed = "" if self.file else check(token, "the shard agent token ($FACTPATCH_AGENT_TOKEN)")

    def for_shard(self, name: str) -> "AgentToken":
        """The token source for one shard: its own file in the token folder, else this one."""
        own = self.shard_dir / name if self.shard_dir is not None and "/" not in name and not name.startswith(".") else None
        if own is None or not own.is_file():
            return self
        if name not in self._per_shard:
            try:
                self._per_shard[name] = AgentToken(file=own)
            except WeakTokenError as e:  # edited since the start: the shard will answer 401 and say so
                log.error("%s; shard %s is sent the fleet-wide token", e, name)
                return self
        return self._per_shard[name]

    def __call__(self) -> str:
        return self._file() if self._file is not None else self._fixed
