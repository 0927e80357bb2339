"""Server streams (WatchRollout) hold a worker thread for as long as they are open. Left alone, 32
idle watches take all 32 workers and RevertToBase waits behind them. So streams get a share of the
workers, never all: at most `total` at once (the rest of the pool stays free for unary calls, the
emergency revert among them) and at most `per_principal` for any one token. A stream over either
cap is refused at once with RESOURCE_EXHAUSTED, which a watcher can retry.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from typing import Iterator


class NoStreamSlot(Exception):
    pass


class StreamSlots:
    def __init__(self, workers: int, reserved: int = 8, per_principal: int = 8):
        self.total = max(1, workers - reserved)
        self.per_principal = max(1, min(per_principal, self.total))
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise NoStreamSlot(f"{self.total} streams are open, the most this control plane keeps open at once "
                                   f"(the other workers stay free for calls such as RevertToBase); retry later")
            if self._open[principal] >= self.per_principal:
                raise NoStreamSlot(f"{principal} has {self.per_principal} streams open, the most one principal may; "
                                   f"close one or retry later")
            self._open[principal] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[principal] -= 1
