"""A TCP relay in front of a real shard that drops its first connections after reading a request:
what the gateway sees when a shard closes a pooled keep-alive connection as a request goes out."""

from __future__ import annotations

import socket
import socketserver
import threading


class DroppingRelay(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: tuple[str, int], drop: int):
        self.target = target
        self.to_drop = drop
        self.dropped = 0
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take_drop(self) -> bool:
        with self._lock:
            if self.dropped < self.to_drop:
                self.dropped += 1
                return True
            return False

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client: socket.socket = self.request
        if self.server.take_drop():
            client.recv(65536)  # the request went out; no answer comes back
            return
        with socket.create_connection(self.server.target) as upstream:
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join(timeout=60)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
