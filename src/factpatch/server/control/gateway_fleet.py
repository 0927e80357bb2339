"""Gateway processes that watch this control plane: who is connected, which swaps each has drained.

A weight swap must not start while a gateway still has a request running on the shard, or that
response would be tagged with a version it was not made by. The reconciler marks the swap (the
mark reaches every gateway on its routing watch), then waits here until each watching gateway has
acknowledged the mark with nothing in flight on the shard. A gateway whose watch stream is closed
is not waited for: it routes by the last state it knew and learns of the swap when it reconnects.
Nor is one whose stream looks open but that has not reported for `stale_after_s` (gateways report
twice a second): a gateway cut off without its connection closing must not hold up every swap.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class GatewayState:
    watches: int = 0  # routing watch streams open now
    watching_since: float = 0.0
    marks: dict[str, int] = field(default_factory=dict)  # acknowledged swap marks per shard
    reported_at: float = 0.0


class RemoteGateways:
    def __init__(self, stale_after_s: float = 5.0):
        self.stale_after_s = stale_after_s
        self._cond = threading.Condition()
        self._gateways: dict[str, GatewayState] = {}

    def _live(self) -> list[GatewayState]:
        since = time.time() - self.stale_after_s
        return [g for g in self._gateways.values() if g.watches > 0 and max(g.reported_at, g.watching_since) > since]

    @contextmanager
    def watching(self, gateway_id: str) -> Iterator[None]:
        with self._cond:
            g = self._gateways.setdefault(gateway_id, GatewayState())
            g.watches, g.watching_since = g.watches + 1, time.time()
        try:
            yield
        finally:
            with self._cond:
                self._gateways[gateway_id].watches -= 1
                self._cond.notify_all()  # a drain no longer waits for it

    def report(self, gateway_id: str, marks: dict[str, int]) -> None:
        with self._cond:
            g = self._gateways.setdefault(gateway_id, GatewayState())
            g.reported_at = time.time()
            for shard, mark in marks.items():
                g.marks[shard] = max(mark, g.marks.get(shard, 0))
            self._cond.notify_all()

    def connected(self) -> list[str]:
        """Gateways a swap waits for now."""
        with self._cond:
            live = {id(g) for g in self._live()}
            return sorted(name for name, g in self._gateways.items() if id(g) in live)

    def drain(self, shard: str, mark: int, timeout: float) -> bool:
        """Waits until every watching gateway acknowledged `mark` with nothing in flight on the shard."""
        def done() -> bool:
            # a gateway acknowledges a mark only once it has nothing in flight there and sends nothing more
            return all(g.marks.get(shard, 0) >= mark for g in self._live())

        with self._cond:
            # woken by every report; a gateway that falls silent drops out within stale_after_s
            deadline = time.monotonic() + timeout
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True
