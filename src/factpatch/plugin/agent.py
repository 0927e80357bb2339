"""Agent routes under /factpatch/v1/ on the vLLM OpenAI server (the contract is in src/factpatch/plugin/README.md).

    POST /factpatch/v1/apply    patch bytes, or {"digest", "store_url"} to fetch from a patch store
    POST /factpatch/v1/revert   back to the base checkpoint, bit for bit
    (both take `drain_timeout_s`: this swap's own drain budget, seconds)
    GET  /factpatch/v1/status   base fingerprint, active version, per-rank state, bytes held

Every route wants `Authorization: Bearer <token>`; a request without it is answered 401 before its
body is read. Errors are `{"error": {"reason": CODE, "message": text}}`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from factpatch.core.checkpoint import Checkpoint
from factpatch.core.reasons import Refusal, http_status
from factpatch.core.signing import SIGNATURE_HEADER, SignatureError, TrustedKeys, check_policy

from .agent_span import agent_span
from .auth import check_bearer
from .checks import CheckError, check_patch
from .swap import MAX_DRAIN_TIMEOUT_S, SwapCoordinator, SwapError

log = logging.getLogger("factpatch.plugin.agent")

PREFIX = "/factpatch/v1"
MAX_PATCH_BYTES = int(os.environ.get("FACTPATCH_MAX_PATCH_BYTES", str(1 << 30)))
MAX_RANK = int(os.environ.get("FACTPATCH_MAX_RANK", "256"))
# The largest ‖ΔW‖/‖W‖ one tensor may get, a per-deployment cap (the chart and the systemd example set
# 1.0: a change as large as the weight itself is damage, not an edit); unset or "off": no cap.
_CAP = os.environ.get("FACTPATCH_MAX_WEIGHT_CHANGE", "off")
MAX_WEIGHT_CHANGE = None if _CAP in ("", "off") else float(_CAP)
_REQUEST_IDS_KEPT = 1024
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class AgentState:
    model: str
    checkpoint: Checkpoint
    swap: SwapCoordinator
    tensor_parallel_size: int
    base_fingerprint: str | None = None
    wired: bool = True  # False when the worker extension is missing
    wiring_error: str | None = None
    done_requests: OrderedDict[str, tuple[str | None, dict[str, Any]]] = field(default_factory=OrderedDict)
    # which patch signatures this shard accepts, and whether it refuses unsigned patches
    trusted_keys: TrustedKeys = field(default_factory=lambda: TrustedKeys([]))
    require_signatures: bool = False


def error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"reason": reason, "message": message}})


def status_body(st: AgentState) -> dict[str, Any]:
    s = st.swap.state
    ranks = [
        {"rank": r.get("rank", i), "active_version": r.get("active_version"), "bytes_held": r.get("bytes_held", 0),
         "patched_modules": r.get("patched_modules", []), "writer": r.get("writer")}
        for i, r in enumerate(s.ranks)
    ]
    return {
        "model": st.model,
        "base_fingerprint": st.base_fingerprint,
        "active_version": s.active_version,
        "applied_at": s.applied_at,
        "swapping": s.swapping,
        "ranks": ranks,
        "bytes_held": sum(r["bytes_held"] for r in ranks),
        "tensor_parallel_size": st.tensor_parallel_size,
        "last_swap": s.last_swap or None,
    }


def _agent(request: Request) -> AgentState | JSONResponse:
    if (why := check_bearer(request.headers.get("authorization"))) is not None:
        return error(401, "UNAUTHENTICATED", why)
    st: AgentState | None = getattr(request.app.state, "factpatch", None)
    if st is None:
        return error(503, "NOT_READY", "the factpatch agent is not initialised")
    if not st.wired:
        return error(503, "NOT_WIRED", st.wiring_error or "worker extension missing")
    return st


def _remember(st: AgentState, request_id: str | None, version: str | None, body: dict[str, Any]) -> None:
    if request_id:
        st.done_requests[request_id] = (version, body)
        while len(st.done_requests) > _REQUEST_IDS_KEPT:
            st.done_requests.popitem(last=False)


def _signature(request: Request, body: dict[str, Any] | None = None) -> bytes | None | JSONResponse:
    """The patch's detached signature: JSON field `signature` or the signature header, base64."""
    raw = (body or {}).get("signature") or request.headers.get(SIGNATURE_HEADER)
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        return error(400, Refusal.MALFORMED, f"{SIGNATURE_HEADER} / signature must be base64")


async def _read_patch(request: Request) -> tuple[bytes, str | None, str | None, float | None, bytes | None] | JSONResponse:
    """(patch bytes, expected digest, request id, drain budget, signature) from either request form."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    request_id = request.headers.get("x-request-id") or request.query_params.get("request_id")
    if ctype == "application/json":
        try:
            body = await request.json()
        except ValueError:
            return error(400, Refusal.MALFORMED, "body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("digest"), str) or not isinstance(body.get("store_url"), str):
            return error(400, Refusal.MALFORMED, "JSON body needs string fields 'digest' and 'store_url'")
        request_id = body.get("request_id") or request_id
        drain = _drain_budget(request, body)
        if isinstance(drain, JSONResponse):
            return drain
        signature = _signature(request, body)
        if isinstance(signature, JSONResponse):
            return signature
        digest = body["digest"].strip().lower()
        if not _DIGEST.fullmatch(digest):
            return error(400, Refusal.MALFORMED, "digest must be 'sha256:' followed by 64 hex digits")
        store_token = body.get("store_token") or request.headers.get("x-factpatch-store-token")
        fetched = await _fetch(body["store_url"], digest, store_token)
        if isinstance(fetched, JSONResponse):
            return fetched
        return fetched, digest, request_id, drain, signature
    drain = _drain_budget(request)
    if isinstance(drain, JSONResponse):
        return drain
    signature = _signature(request)
    if isinstance(signature, JSONResponse):
        return signature
    if ctype not in ("application/octet-stream", ""):
        return error(415, Refusal.MALFORMED, f"send application/octet-stream patch bytes or JSON, not {ctype!r}")
    if int(request.headers.get("content-length") or 0) > MAX_PATCH_BYTES:
        return error(413, Refusal.MALFORMED, f"patch larger than {MAX_PATCH_BYTES} bytes")
    data = await request.body()
    if len(data) > MAX_PATCH_BYTES:
        return error(413, Refusal.MALFORMED, f"patch larger than {MAX_PATCH_BYTES} bytes")
    return data, request.headers.get("x-factpatch-digest"), request_id, drain, signature



def _drain_budget(request: Request, body: dict[str, Any] | None = None) -> float | None | JSONResponse:
    """This swap's own drain timeout (`drain_timeout_s`, query or JSON body), if the caller gave one."""
    raw = (body or {}).get("drain_timeout_s", request.query_params.get("drain_timeout_s"))
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(raw, bool) or not 0.0 <= value <= MAX_DRAIN_TIMEOUT_S:
        return error(400, Refusal.MALFORMED, f"drain_timeout_s must be seconds from 0 to {MAX_DRAIN_TIMEOUT_S:g}, got {raw!r}")
    return value


async def _fetch(store_url: str, digest: str, store_token: str | None) -> bytes | JSONResponse:
    import httpx

    if not store_url.startswith(("http://", "https://")):
        return error(400, Refusal.MALFORMED, "store_url must be an http(s) URL")
    headers = {"X-Factpatch-Store-Token": store_token} if store_token else {}
    url = f"{store_url.rstrip('/')}/{digest}"
    try:
        async with httpx.AsyncClient(timeout=60.0) as client:
            r = await client.get(url, headers=headers)
    except httpx.HTTPError as e:
        return error(502, "STORE_UNREACHABLE", f"GET {url}: {type(e).__name__}: {e}")
    if r.status_code != 200:
        return error(502, "STORE_ERROR", f"GET {url} answered {r.status_code}")
    if len(r.content) > MAX_PATCH_BYTES:
        return error(413, Refusal.MALFORMED, f"patch larger than {MAX_PATCH_BYTES} bytes")
    return r.content


async def _internal(st: AgentState, e: Exception) -> JSONResponse:
    log.exception("swap failed")
    try:
        await st.swap.refresh()
    except Exception:
        pass
    return error(500, "INTERNAL", f"{type(e).__name__}: {e}; see status for the ranks' state")


async def _apply(request: Request):
    st = _agent(request)
    if isinstance(st, JSONResponse):
        return st
    got = await _read_patch(request)
    if isinstance(got, JSONResponse):
        return got
    data, expected, request_id, drain, signature = got
    try:  # before the patch is even read: a deployment that requires signatures reads only signed bytes
        await asyncio.to_thread(check_policy, st.trusted_keys, st.require_signatures, data, signature)
    except SignatureError as e:
        return error(http_status(e.reason, default=403), e.reason, str(e))
    try:
        _, digest = await asyncio.to_thread(
            check_patch, data, st.checkpoint, expected_digest=expected, max_rank=MAX_RANK,
            max_change=MAX_WEIGHT_CHANGE
        )
    except CheckError as e:
        return error(http_status(e.reason, default=400), e.reason, str(e))
    if request_id and request_id in st.done_requests:
        version, body = st.done_requests[request_id]
        if version != digest:
            return error(409, "REQUEST_ID_REUSED", f"request id {request_id!r} was used for {version}")
        return body
    try:
        await st.swap.swap(data, digest, drain_timeout_s=drain)
    except SwapError as e:
        return error(e.status, e.reason, str(e))
    except Exception as e:  # an RPC that timed out or a worker that died: state is re-read
        return await _internal(st, e)
    body = status_body(st)
    _remember(st, request_id, digest, body)
    return body


async def _revert(request: Request):
    st = _agent(request)
    if isinstance(st, JSONResponse):
        return st
    request_id = request.headers.get("x-request-id") or request.query_params.get("request_id")
    if request_id and request_id in st.done_requests:
        version, body = st.done_requests[request_id]
        if version is not None:
            return error(409, "REQUEST_ID_REUSED", f"request id {request_id!r} was used for {version}")
        return body
    drain = _drain_budget(request)
    if isinstance(drain, JSONResponse):
        return drain
    try:
        await st.swap.swap(None, None, drain_timeout_s=drain)
    except SwapError as e:
        return error(e.status, e.reason, str(e))
    except Exception as e:
        return await _internal(st, e)
    body = status_body(st)
    _remember(st, request_id, None, body)
    return body


def build_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    @router.get("/status")
    async def status(request: Request):
        st = _agent(request)
        if isinstance(st, JSONResponse):
            return st
        return status_body(st)

    @router.post("/apply")
    async def apply(request: Request):
        with agent_span(request, PREFIX + "/apply") as span:
            return span.answered(await _apply(request))

    @router.post("/revert")
    async def revert(request: Request):
        with agent_span(request, PREFIX + "/revert") as span:
            return span.answered(await _revert(request))

    return router


