"""Forwarding one OpenAI request to a shard: retries on a refused connection, streaming pass-through,
and the text each response carries, fed to the monitors as it arrives.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import aiohttp

from factpatch.server.metrics import version_label

# Request headers worth passing on; everything else (hop-by-hop, Host, our routing headers) stays here.
# The trace context is replaced by the gateway's own span's when it has one (request_span.py).
FORWARD_HEADERS = ("authorization", "content-type", "accept", "x-request-id", "traceparent", "tracestate")


def forward_headers(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() in FORWARD_HEADERS}


def prompt_text(body: dict[str, Any], chat: bool) -> str:
    """The text of a request's prompt, for scoping monitors to the subjects it mentions."""
    if chat:
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts += [p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(parts)
    p = body.get("prompt")
    if isinstance(p, str):
        return p
    if isinstance(p, list):
        return "\n".join(x for x in p if isinstance(x, str))
    return ""


def choice_texts(obj: dict[str, Any]) -> Iterator[tuple[int, str]]:
    """(choice index, text) in a completion, chat completion, or one streamed chunk of either."""
    for ch in obj.get("choices") or ():
        if not isinstance(ch, dict):
            continue
        idx = ch.get("index", 0)
        text = ch.get("text")
        if text is None:
            msg = ch.get("delta") or ch.get("message") or {}
            text = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(text, str) and text:
            yield idx, text


class StreamTiming:
    """When a streamed answer's text chunks arrived: time to the first, and per chunk after it."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.first: float | None = None
        self.last: float | None = None
        self.chunks = 0

    def token(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.chunks += 1

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.t0

    @property
    def per_token(self) -> float | None:
        if self.chunks < 2:
            return None
        return (self.last - self.first) / (self.chunks - 1)


class SSEReader:
    """Splits a server-sent-events byte stream into JSON payloads, whatever the chunking."""

    def __init__(self):
        self._buf = b""
        self.error = False

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        self._buf += data
        while True:
            cut = self._buf.find(b"\n\n")
            if cut < 0:
                return
            event, self._buf = self._buf[:cut], self._buf[cut + 2:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]" or not payload:
                    continue
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    if "error" in obj:
                        self.error = True
                    yield obj


class NoShard(Exception):
    def __init__(self, message: str, status: int = 503, code: str = "no_shard_available"):
        super().__init__(message)
        self.status, self.code = status, code


async def send(session: aiohttp.ClientSession, router, route: str, cands, path: str, raw: bytes,
               headers: dict[str, str], metrics, timeout: aiohttp.ClientTimeout,
               on_retry: Callable[[Any, BaseException], None] | None = None):
    """Posts to the least busy candidate. Returns (shard, response); the caller releases the response.
    `on_retry(shard, error)` hears of each attempt that is tried again.

    Two failures happen before any answer and are tried again on a shard of the same version: a
    connection that cannot be made (that shard is out for this request), and a connection dropped
    before the response began (usually a pooled connection the shard had just closed at its
    keep-alive limit: that shard may be tried once more, on another connection)."""
    refused: set[str] = set()
    dropped: dict[str, int] = {}
    shard = router.pick(cands)
    while True:
        if not router.swaps.enter(shard.name):  # its swap began since the route was chosen
            refused.add(shard.name)
            rest = [c for c in cands if c.name not in refused]
            if not rest:
                raise NoShard("every candidate shard began a weight swap", 503, "no_shard_available")
            shard = router.pick(rest)
            continue
        try:
            resp = await session.post(shard.url + path, data=raw, headers=headers, timeout=timeout)
            return shard, resp
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError,
                aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            router.swaps.leave(shard.name)
            if isinstance(e, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
                # the shard is down or restarting: an error of that shard, whatever happens next
                metrics.errors.labels(version_label(shard.version), shard.name, "connect").inc()
                refused.add(shard.name)
            else:
                # benign when a retry answers (counted as a retry only); a second drop rules the shard out
                dropped[shard.name] = dropped.get(shard.name, 0) + 1
                if dropped[shard.name] > 1:
                    refused.add(shard.name)
            same = [c for c in cands if c.version == shard.version and c.name not in refused]
            if not same:
                if shard.name in dropped:
                    metrics.errors.labels(version_label(shard.version), shard.name, "dropped").inc()
                raise NoShard(f"no shard serving version {shard.version or 'base'} could be reached ({e!r})", 502,
                              "shard_unreachable") from e
            metrics.retries.labels(version_label(shard.version), shard.name).inc()
            if on_retry is not None:
                on_retry(shard, e)
            # another shard if there is one; the dropped one again only when it is the last left
            others = [c for c in same if c.name != shard.name]
            shard = router.pick(others or same)
        except BaseException as e:
            router.swaps.leave(shard.name)
            if isinstance(e, (aiohttp.ClientError, TimeoutError)):
                metrics.errors.labels(version_label(shard.version), shard.name, "upstream_error").inc()
            raise
