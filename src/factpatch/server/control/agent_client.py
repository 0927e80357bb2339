"""Client for a shard's agent API (routes under /factpatch/v1/ on the agent's own port, HTTP or HTTPS).

The control plane pushes the patch bytes in the apply request (with their digest), so shards never
need a route back to the control plane. The shard agent token is a secret of its own, distinct from
the tokens clients use against the control plane.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
from opentelemetry import propagate

from factpatch.core.reasons import PERMANENT
from factpatch.core.signing import SIGNATURE_HEADER


class AgentError(Exception):
    """The shard answered with a refusal (4xx/5xx) or could not be reached (reason UNREACHABLE)."""

    def __init__(self, reason: str, message: str, http_status: int | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.http_status = http_status

    @property
    def permanent(self) -> bool:
        return self.reason in PERMANENT


@dataclass
class ShardStatus:
    raw: dict[str, Any]

    @property
    def active_version(self) -> str | None:
        return self.raw.get("active_version") or None

    @property
    def swapping(self) -> bool:
        return bool(self.raw.get("swapping"))

    @property
    def base_fingerprint(self) -> str:
        return self.raw.get("base_fingerprint") or ""

    @property
    def model(self) -> str:
        return self.raw.get("model") or ""


class _Bearer(httpx.Auth):
    """The token is asked for on every request, so a rotated token file takes effect without a restart."""

    def __init__(self, token: str | Callable[[], str]):
        self._token = token if callable(token) else (lambda: token)

    def auth_flow(self, request):
        request.headers["Authorization"] = f"Bearer {self._token()}"
        yield request


def agent_tls_context(ca: str | Path | None, cert: str | Path | None = None,
                      key: str | Path | None = None) -> ssl.SSLContext | None:
    """How the control plane talks to agents that speak HTTPS: trust `ca` (else the system's roots) and,
    for agents that ask for one (mutual TLS), show `cert`/`key`. None when nothing is given."""
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise ValueError("--agent-client-cert and --agent-client-key go together: give both or neither")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class AgentClient:
    def __init__(self, address: str, token: str | Callable[[], str], *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, tls: ssl.SSLContext | None = None):
        self.address = address.rstrip("/")
        # An address no request can use (registered before it was checked, or given to `serve
        # --shard`) makes this shard unreachable; it must not fail the reconcile pass of every shard.
        self._unusable = ""
        try:
            self._http = httpx.Client(
                base_url=self.address + "/factpatch/v1",
                auth=_Bearer(token),
                timeout=timeout,
                transport=transport,
                verify=tls if tls is not None else True,
            )
        except httpx.InvalidURL as e:
            self._http, self._unusable = None, str(e)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def _call(self, method: str, path: str, timeout: float | None = None, **kw) -> dict[str, Any]:
        if self._http is None:
            raise AgentError("UNREACHABLE", f"{self.address}: not a usable URL ({self._unusable})")
        try:
            resp = self._http.request(method, path, timeout=timeout or self._http.timeout, **kw)
        except httpx.TimeoutException as e:
            raise AgentError("UNREACHABLE", f"{self.address}: timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise AgentError("UNREACHABLE", f"{self.address}: {type(e).__name__}: {e}") from None
        except (httpx.InvalidURL, UnicodeError) as e:  # a host name DNS cannot encode (empty or long label)
            raise AgentError("UNREACHABLE", f"{self.address}: not a usable URL ({e})") from None
        if resp.status_code == 200:
            return resp.json()
        reason, message = f"HTTP_{resp.status_code}", resp.text[:500]
        try:
            err = resp.json().get("error") or {}
            reason, message = err.get("reason") or reason, err.get("message") or message
        except (ValueError, AttributeError):
            pass
        if resp.status_code == 401:
            reason = "AGENT_UNAUTHORIZED"
        raise AgentError(reason, message, resp.status_code)

    def status(self, timeout: float | None = None) -> ShardStatus:
        return ShardStatus(self._call("GET", "/status", timeout))

    def apply(self, data: bytes, digest: str, timeout: float | None = None, drain_timeout_s: float | None = None,
              signature: bytes | None = None) -> ShardStatus:
        """`drain_timeout_s`: how long the shard lets running requests finish before it cuts them off and
        changes the weights (None: the shard's own setting). `signature`: the patch's detached signature."""
        headers = {"Content-Type": "application/octet-stream", "X-Factpatch-Digest": digest}
        if signature:
            headers[SIGNATURE_HEADER] = base64.b64encode(signature).decode()
        propagate.inject(headers)  # the shard's swap span becomes a child of the caller's
        return ShardStatus(self._call("POST", "/apply", timeout, content=data, params=_drain(drain_timeout_s), headers=headers))

    def revert(self, timeout: float | None = None, drain_timeout_s: float | None = None) -> ShardStatus:
        headers: dict[str, str] = {}
        propagate.inject(headers)
        return ShardStatus(self._call("POST", "/revert", timeout, params=_drain(drain_timeout_s), headers=headers))


def _drain(drain_timeout_s: float | None) -> dict[str, str]:
    return {} if drain_timeout_s is None else {"drain_timeout_s": repr(float(drain_timeout_s))}
