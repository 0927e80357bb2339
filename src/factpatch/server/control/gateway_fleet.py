"""Gateway processes that watch this control plane: who is connected, what each has in flight.

A weight swap must not start while a gateway still has a request running on the shard, or that
response would be tagged with a version it was not made by. The reconciler marks the swap (the
mark reaches every gateway on its routing watch), then waits here until each watching gateway has
acknowledged the mark with nothing in flight on the shard. A gateway whose watch stream is closed
is not waited for: it routes by the last state it knew and learns of the swap when it reconnects.
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
    inflight: dict[str, int] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)  # acknowledged swap marks per shard
    reported_at: float = 0.0
    samples: int = 0


class RemoteGateways:
    def __init__(self):
        self._cond = threading.Condition()
        self._gateways: dict[str, GatewayState] = {}

    @contextmanager
    def watching(self, gateway_id: str) -> Iterator[None]:
        with self._cond:
            self._gateways.setdefault(gateway_id, GatewayState()).watches += 1
        try:
            yield
        finally:
            with self._cond:
                self._gateways[gateway_id].watches -= 1
                self._cond.notify_all()  # a drain no longer waits for it

    def report(self, gateway_id: str, inflight: dict[str, int], marks: dict[str, int], samples: int) -> None:
        with self._cond:
            g = self._gateways.setdefault(gateway_id, GatewayState())
            g.inflight, g.reported_at, g.samples = dict(inflight), time.time(), g.samples + samples
            for shard, mark in marks.items():
                g.marks[shard] = max(mark, g.marks.get(shard, 0))
            self._cond.notify_all()

    def connected(self) -> list[str]:
        with self._cond:
            return sorted(name for name, g in self._gateways.items() if g.watches > 0)

    def drain(self, shard: str, mark: int, timeout: float) -> bool:
        """Waits until every watching gateway acknowledged `mark` with nothing in flight on the shard."""
        def done() -> bool:
            # a gateway acknowledges a mark only once it has nothing in flight there and sends nothing more
            return all(g.marks.get(shard, 0) >= mark for g in self._gateways.values() if g.watches > 0)

        with self._cond:
            return self._cond.wait_for(done, timeout)
