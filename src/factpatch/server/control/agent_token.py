"""The token the control plane sends to shard agents: from $FACTPATCH_AGENT_TOKEN, or the first line of
`--agent-token-file`, read again before every agent call so a rotation needs no restart (see
core/tokens.py for the rotation order). A weak token refuses the start; a weak or unreadable file
later keeps the last good token and logs why."""

from __future__ import annotations

import logging
from pathlib import Path

from factpatch.core.tokens import WeakTokenError, check, read_token_file

log = logging.getLogger("factpatch.agent_token")


class AgentToken:
    def __init__(self, token: str = "", file: Path | None = None):
        self.file = Path(file) if file else None
        if self.file is None and not token:
            raise WeakTokenError("no shard agent token: set FACTPATCH_AGENT_TOKEN or pass --agent-token-file")
        self._current = read_token_file(self.file, "--agent-token-file")[0] if self.file else check(
            token, "the shard agent token ($FACTPATCH_AGENT_TOKEN)")

    def __call__(self) -> str:
        if self.file is not None:
            try:
                self._current = read_token_file(self.file, "--agent-token-file")[0]
            except WeakTokenError as e:
                log.error("%s; still sending the previous token", e)
        return self._current
