"""One control plane per state directory.

Two control planes on one state directory would each reconcile the same shards from the same
database and race on every desired version. The first takes an exclusive `flock` on
`STATE_DIR/control-plane.lock` and holds it for its lifetime (the kernel drops it when the process
dies, kill -9 included); the second is refused at start, naming the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "control-plane.lock"


class StateDirInUse(RuntimeError):
    pass


class StateDirLock:
    def __init__(self, state_dir: str | os.PathLike):
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "StateDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirInUse(f"state directory {self.path.parent} is in use by another control plane "
                                f"(pid {holder}); stop it first, or give this one its own --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
