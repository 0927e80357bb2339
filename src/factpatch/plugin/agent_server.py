"""The agent's own HTTP server: the weight-writing routes on a port of their own, never on vLLM's OpenAI
port (whose `--api-key` does not cover extra routes, and which every client of the model can reach).

It runs in the vLLM API server process, on the same event loop, beside vLLM's own server:

    config = AgentServerConfig.from_env()      # FACTPATCH_AGENT_HOST/PORT, TLS files
    sock = config.bind()                       # the socket `factpatch shard` bound, or a new one
    asyncio.create_task(serve(app, config, sock))

With `FACTPATCH_AGENT_TLS_CERT` and `_KEY` the agent speaks HTTPS; with `FACTPATCH_AGENT_TLS_CLIENT_CA`
as well it asks every caller for a client certificate signed by that CA (mutual TLS) and refuses the
connection without one, before any route or token is looked at.

`factpatch shard` binds the agent's port itself, before vLLM starts, and hands the listening socket
down as an inherited descriptor (`FACTPATCH_AGENT_LISTEN_FD`), as vLLM does with its own port: a port
in use stops the shard in its first second, and no other process can take the port while the engine
loads (half a minute and more).
"""

from __future__ import annotations

import os
import socket
import ssl
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

HOST_ENV = "FACTPATCH_AGENT_HOST"
PORT_ENV = "FACTPATCH_AGENT_PORT"
TLS_CERT_ENV = "FACTPATCH_AGENT_TLS_CERT"
TLS_KEY_ENV = "FACTPATCH_AGENT_TLS_KEY"
TLS_CLIENT_CA_ENV = "FACTPATCH_AGENT_TLS_CLIENT_CA"
LISTEN_FD_ENV = "FACTPATCH_AGENT_LISTEN_FD"


class AgentServerConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AgentServerConfig:
    host: str
    port: int
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    listen_fd: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "AgentServerConfig":
        env = dict(os.environ if env is None else env)
        raw_port = env.get(PORT_ENV, "")
        if not raw_port:
            raise AgentServerConfigError(f"{PORT_ENV} is not set: the agent needs a port of its own")
        try:
            port = int(raw_port)
        except ValueError:
            port = -1
        if not 1 <= port <= 65535:
            raise AgentServerConfigError(f"{PORT_ENV}={raw_port!r}: not a port (1-65535)")
        raw_fd = env.get(LISTEN_FD_ENV, "")
        if raw_fd and not raw_fd.isdigit():
            raise AgentServerConfigError(f"{LISTEN_FD_ENV}={raw_fd!r}: not a file descriptor number")
        cfg = cls(host=env.get(HOST_ENV) or "127.0.0.1", port=port, tls_cert=env.get(TLS_CERT_ENV) or None,
                  tls_key=env.get(TLS_KEY_ENV) or None, tls_client_ca=env.get(TLS_CLIENT_CA_ENV) or None,
                  listen_fd=int(raw_fd) if raw_fd else None)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse half a TLS setup: a key without a certificate, or client auth without TLS."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise AgentServerConfigError(f"{TLS_CERT_ENV} and {TLS_KEY_ENV} go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise AgentServerConfigError(f"{TLS_CLIENT_CA_ENV} (client certificates) needs {TLS_CERT_ENV} and {TLS_KEY_ENV}")
        for name, path in ((TLS_CERT_ENV, self.tls_cert), (TLS_KEY_ENV, self.tls_key), (TLS_CLIENT_CA_ENV, self.tls_client_ca)):
            if path and not Path(path).is_file():
                raise AgentServerConfigError(f"{name}={path}: no such file")
        if self.tls_cert:
            self.ssl_context()  # a certificate that does not load, or a key that does not match it

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
            if self.tls_client_ca:
                ctx.load_verify_locations(self.tls_client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (ssl.SSLError, OSError) as e:
            raise AgentServerConfigError(f"agent TLS files do not load ({TLS_CERT_ENV}, {TLS_KEY_ENV}, {TLS_CLIENT_CA_ENV}): {e}") from None
        return ctx

    def bind(self) -> socket.socket:
        """The listening socket: the one `factpatch shard` bound and handed down, else bound now (a port in
        use stops the shard at start, not later)."""
        sock = self.adopt() if self.listen_fd is not None else listen(self.host, self.port)
        sock.set_inheritable(False)  # the engine's later child processes need not hold the port
        sock.setblocking(False)
        return sock

    def adopt(self) -> socket.socket:
        """The inherited listening socket, checked to be a TCP listener on this config's port."""
        try:
            sock = socket.socket(fileno=self.listen_fd)
        except OSError as e:
            raise AgentServerConfigError(f"{LISTEN_FD_ENV}={self.listen_fd}: {e.strerror or e}") from None
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            bound = sock.getsockname()[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else None
        except OSError:
            listening, bound = 0, None
        if sock.type != socket.SOCK_STREAM or not listening or bound != self.port:
            sock.detach()  # not ours to close
            raise AgentServerConfigError(
                f"{LISTEN_FD_ENV}={self.listen_fd}: not a TCP socket listening on port {self.port} ({PORT_ENV})")
        return sock


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port; AgentServerConfigError naming the address when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise AgentServerConfigError(f"agent port {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock


def build_app(agent_state: Any) -> Any:
    """A FastAPI app with only the agent routes, its state the shard's AgentState."""
    from fastapi import FastAPI

    from .agent import build_router

    app = FastAPI(title="factpatch shard agent", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(build_router())
    app.state.factpatch = agent_state
    return app


async def serve(app: Any, config: AgentServerConfig, sock: socket.socket) -> None:
    import uvicorn

    class _Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:  # vLLM's server owns SIGINT/SIGTERM in this process
            yield

    ctx = config.ssl_context()
    uv = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, timeout_keep_alive=30,
                        ssl_context_factory=(lambda _config, _default: ctx) if ctx is not None else None)
    await _Server(uv).serve(sockets=[sock])
