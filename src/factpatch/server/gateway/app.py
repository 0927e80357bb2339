"""The OpenAI-compatible gateway: /v1/completions, /v1/chat/completions (streamed or not),
/v1/models, /metrics and /health, on its own port, in its own thread and event loop.

Routing headers (request):
  X-Factpatch-Route-Key: sticky key (else the body's `user` field) — one key, one version
  X-Factpatch-Route: canary | base — QA override, with X-Factpatch-Route-Token: <an operator token>;
    403 without it, 503 when that side has no shard. Forced requests never count in canary analysis.
Response headers: X-Factpatch-Version (digest or "base"), X-Factpatch-Shard, X-Factpatch-Route.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from factpatch.core.version_label import BASE as BASE_VERSION
from factpatch.server.control.analysis import Observation
from factpatch.server.gateway.proxy import (
    NoShard,
    SSEReader,
    StreamTiming,
    choice_texts,
    forward_headers,
    prompt_text,
    send,
)
from factpatch.server.gateway.request_span import RequestSpan, request_span
from factpatch.server.gateway.routing import BASE, CANARY, Router
from factpatch.server.metrics import Metrics, version_label
from factpatch.server.monitors.engine import CompiledMonitors

log = logging.getLogger("factpatch.gateway")

KEY_HEADER = "X-Factpatch-Route-Key"
ROUTE_HEADER = "X-Factpatch-Route"
ROUTE_TOKEN_HEADER = "X-Factpatch-Route-Token"
VERSION_HEADER = "X-Factpatch-Version"
SHARD_HEADER = "X-Factpatch-Shard"
MAX_BODY = 16 << 20


@dataclass
class GatewayConfig:
    listen: str = "127.0.0.1:8080"
    upstream_timeout_s: float = 600.0
    connect_timeout_s: float = 5.0
    # When every shard a request could go to is in the middle of a weight swap, hold the request up
    # to this long for one to come back instead of failing it (a fleet-wide revert swaps all at once).
    swap_wait_s: float = 30.0
    # Idle connections to shards are closed before the shard closes them: vLLM's server drops a
    # keep-alive connection after 5 s idle (VLLM_HTTP_TIMEOUT_KEEP_ALIVE), and a request sent on a
    # connection in the instant the shard closes it fails before any answer.
    upstream_keepalive_s: float = 4.0
    # /metrics on an address of its own (host:port, port 0 picks one), and no longer on `listen`: its
    # series name every patched fact and its old value, which the gateway's users need not see.
    metrics_listen: str | None = None


async def _listen(app: web.Application, address: str) -> tuple[web.AppRunner, int]:
    host, _, port = address.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port)).start()
    return runner, runner.addresses[0][1]


def openai_error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": param, "code": code}}, status=status)


class MonitorSet(Protocol):
    compiled: CompiledMonitors  # the live set; replaced whole when monitors change


class TrafficSink(Protocol):
    def add(self, o: Observation) -> None: ...


class Gateway:
    def __init__(self, cfg: GatewayConfig, router: Router, monitors: MonitorSet, metrics: Metrics,
                 observations: TrafficSink,
                 may_force_route: Callable[[str | None], bool] = lambda token: False,
                 ready: Callable[[], bool] = lambda: True):
        self.may_force_route = may_force_route  # is this X-Factpatch-Route-Token an operator's?
        self.ready = ready  # has routing state (a gateway process: at least one snapshot since it started)
        self.cfg = cfg
        self.monitors = monitors
        self.metrics = metrics
        self.router = router
        self.observations = observations
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    # lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="gateway", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise OSError(f"gateway could not listen on {self.cfg.listen}: {self._error}")

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._startup())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _startup(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=self.cfg.upstream_keepalive_s),
            auto_decompress=False)
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes([
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat),
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
        ])
        if not self.cfg.metrics_listen:
            app.add_routes([web.get("/metrics", self.metrics_page)])
        self._runner, self.port = await _listen(app, self.cfg.listen)
        if self.cfg.metrics_listen:
            metrics_app = web.Application()
            metrics_app.add_routes([web.get("/metrics", self.metrics_page), web.get("/health", self.health)])
            self._metrics_runner, self.metrics_port = await _listen(metrics_app, self.cfg.metrics_listen)

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        if self._metrics_runner:
            await self._metrics_runner.cleanup()
        await self.session.close()

    # handlers

    async def health(self, request: web.Request) -> web.Response:
        if not self.ready():
            return web.Response(status=503, text="no routing state yet: waiting for the control plane\n")
        return web.Response(text="ok\n")

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        with request_span(request, "/v1/models") as span:
            answer = await self._models(request, span)
            span.answered(answer.status)
            return answer

    async def _models(self, request: web.Request, span: RequestSpan) -> web.Response:
        route, cands = self.router.choose(None, BASE)
        if not cands:
            route, cands = self.router.choose(None, CANARY)
        if not cands:
            return openai_error(503, "no shard is available", type_="server_error", code="no_shard_available")
        shard = self.router.pick(cands)
        span.served(shard, route)
        try:
            headers = span.upstream_headers(forward_headers(request.headers))
            async with self.session.get(shard.url + "/v1/models", headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                body = await resp.read()
                return web.Response(body=body, status=resp.status, headers={
                    "Content-Type": resp.headers.get("Content-Type", "application/json"), **self._served(shard, route)})
        except aiohttp.ClientError as e:
            return openai_error(502, f"shard {shard.name} did not answer: {e}", type_="server_error", code="shard_unreachable")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "/v1/completions", chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "/v1/chat/completions", chat=True)

    @staticmethod
    def _served(shard, route: str) -> dict[str, str]:
        return {VERSION_HEADER: shard.version or BASE_VERSION, SHARD_HEADER: shard.name, ROUTE_HEADER: route}

    def _check(self, request: web.Request, raw: bytes, chat: bool) -> tuple[dict[str, Any] | None, web.Response | None]:
        try:
            body = json.loads(raw)
        except ValueError as e:
            return None, openai_error(400, f"request body is not valid JSON: {e}", code="invalid_json")
        if not isinstance(body, dict):
            return None, openai_error(400, "request body must be a JSON object", code="invalid_json")
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return None, openai_error(400, "'messages' must be a non-empty list", param="messages")
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
                return None, openai_error(400, "each message must be an object with a 'role'", param="messages")
        elif not isinstance(body.get("prompt"), (str, list)):
            return None, openai_error(400, "'prompt' is required (a string or a list)", param="prompt")
        if "stream" in body and not isinstance(body["stream"], bool):
            return None, openai_error(400, "'stream' must be true or false", param="stream")
        if "user" in body and not isinstance(body["user"], str):
            return None, openai_error(400, "'user' must be a string", param="user")
        route = request.headers.get(ROUTE_HEADER)
        if route is not None and route not in (CANARY, BASE):
            return None, openai_error(400, f"header {ROUTE_HEADER} must be 'canary' or 'base', got {route!r}",
                                      param=ROUTE_HEADER)
        # A client steering itself onto one side would also steer the canary's analysis.
        if route is not None and not self.may_force_route(request.headers.get(ROUTE_TOKEN_HEADER)):
            return None, openai_error(403, f"header {ROUTE_HEADER} needs {ROUTE_TOKEN_HEADER} with an operator token",
                                      type_="permission_error", param=ROUTE_TOKEN_HEADER, code="route_override_forbidden")
        return body, None

    async def _proxy(self, request: web.Request, path: str, chat: bool) -> web.StreamResponse:
        with request_span(request, path) as span:
            answer = await self._forward(request, path, chat, span)
            span.answered(answer.status)
            return answer

    async def _forward(self, request: web.Request, path: str, chat: bool, span: RequestSpan) -> web.StreamResponse:
        t0 = time.perf_counter()
        raw = await request.read()
        body, err = self._check(request, raw, chat)
        if err is not None:
            return err
        span.request(stream=bool(body.get("stream")), forced=request.headers.get(ROUTE_HEADER) is not None)
        key = request.headers.get(KEY_HEADER) or body.get("user") or None
        compiled = self.monitors.compiled  # the set this response is judged by, even if monitors change meanwhile
        mentioned = compiled.mentioned(prompt_text(body, chat))
        timeout = aiohttp.ClientTimeout(total=self.cfg.upstream_timeout_s, sock_connect=self.cfg.connect_timeout_s)
        deadline = time.monotonic() + self.cfg.swap_wait_s
        upstream_headers = span.upstream_headers(forward_headers(request.headers))
        while True:
            route, cands = self.router.choose(key, request.headers.get(ROUTE_HEADER))
            if not cands:
                if self.router.changing() and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)  # a shard is mid-swap: it will be back shortly
                    continue
                return openai_error(503, f"no {route} shard is available (all busy swapping, unhealthy or none registered)",
                                    type_="server_error", code="no_shard_available")
            try:
                shard, resp = await send(self.session, self.router, route, cands, path, raw,
                                         upstream_headers, self.metrics, timeout, on_retry=span.retried)
                break
            except NoShard as e:
                if e.code == "no_shard_available" and time.monotonic() < deadline:
                    continue  # every candidate began a swap after it was chosen: choose again
                return openai_error(e.status, str(e), type_="server_error", code=e.code)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # sent, but no answer came back
                return openai_error(502, f"the shard failed to answer: {e!r}", type_="server_error", code="upstream_error")
        span.served(shard, route)
        scanner = compiled.scanner()
        timing = StreamTiming(t0)
        failed: str | None = None
        try:
            headers = self._served(shard, route)
            if body.get("stream") and resp.status == 200:
                out = web.StreamResponse(status=200, headers={
                    "Content-Type": resp.headers.get("Content-Type", "text/event-stream"), "Cache-Control": "no-cache",
                    **headers})
                await out.prepare(request)
                sse = SSEReader()
                try:
                    async for chunk in resp.content.iter_any():
                        for obj in sse.feed(chunk):
                            for _, text in choice_texts(obj):
                                scanner.feed(text)
                                if text:
                                    timing.token()
                        await out.write(chunk)
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError):
                    failed = "stream_broken"
                except (ConnectionResetError, asyncio.CancelledError):
                    failed = "client_gone"  # the client left; not the shard's fault
                    raise
                if sse.error and failed is None:
                    failed = "stream_error"
                if failed != "client_gone":
                    await out.write_eof()
                return out
            try:
                data = await resp.read()
            except aiohttp.ClientError as e:
                failed = "upstream_broken"
                return openai_error(502, f"shard {shard.name} broke off its answer: {e!r}", type_="server_error",
                                    code="upstream_error")
            if resp.status == 200:
                try:
                    for _, text in choice_texts(json.loads(data)):
                        scanner.feed(text)
                except ValueError:
                    failed = "bad_response"
            elif resp.status >= 500:
                failed = "upstream_5xx"
            return web.Response(body=data, status=resp.status, headers={
                "Content-Type": resp.headers.get("Content-Type", "application/json"), **headers})
        except asyncio.TimeoutError:
            failed = "timeout"
            return openai_error(504, f"shard {shard.name} did not answer in time", type_="server_error", code="timeout")
        finally:
            resp.release()
            self.router.swaps.leave(shard.name)
            matched = scanner.close()
            span.failed(failed)
            if failed != "client_gone":
                self._record(shard, resp.status, failed, time.perf_counter() - t0, compiled, mentioned, matched,
                             forced=request.headers.get(ROUTE_HEADER) is not None, timing=timing)

    def _record(self, shard, status: int, failed: str | None, latency: float, compiled, mentioned, matched,
                forced: bool = False, timing: StreamTiming | None = None) -> None:
        v, s = version_label(shard.version), shard.name
        m = self.metrics
        m.request_series(v, s)
        m.requests.labels(v, s).inc()
        m.latency.labels(v, s).observe(latency)
        if timing is not None and not failed:
            if timing.ttft is not None:
                m.ttft.labels(v, s).observe(timing.ttft)
            if timing.per_token is not None:
                m.tpot.labels(v, s).observe(timing.per_token)
        if failed:
            m.errors.labels(v, s, failed).inc()
        names: frozenset[str] = frozenset()
        if status == 200 and not failed:
            evaluated = compiled.evaluated(mentioned)
            m.monitor_counts.record(("", *mentioned), v, s)
            names = frozenset(compiled.monitors[i].name for i in matched & evaluated)
            m.monitor_counts.match(names, v, s)
        # 4xx are the client's doing: neither an error of the version nor a sample for it; QA's forced
        # requests are not a sample of the traffic the canary gets
        if (failed or status < 400) and not forced:
            self.observations.add(Observation(time.time(), shard.version, s, bool(failed), latency, names, mentioned,
                                              timing.ttft if timing is not None else None))
