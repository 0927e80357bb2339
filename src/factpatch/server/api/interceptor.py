"""The call pipeline every RPC goes through: authenticate, check the role, audit mutating calls,
answer retried request ids, serialise mutations, and turn ApiError into a status with a reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sqlite3
import threading
from dataclasses import dataclass

import grpc

from factpatch.server.api.auth import (
    ANONYMOUS,
    OPERATOR,
    UNLOCKED_METHODS,
    ClientTokensFile,
    Principal,
    TokenTable,
    allowed,
    required_role,
)
from factpatch.server.api.call_span import note_request_id, traced, traced_stream
from factpatch.server.api.errors import ApiError, invalid, state_unwritable, to_status
from factpatch.server.api.idempotency import Idempotency, request_hash
from factpatch.server.api.stream_slots import NoStreamSlot, StreamSlots
from factpatch.server.state.audit import AuditLog

log = logging.getLogger("factpatch.api")


@dataclass
class Call:
    method: str
    principal: Principal
    request_id: str = ""
    target: str = ""


current_call: contextvars.ContextVar[Call] = contextvars.ContextVar("current_call")


def target_of(request) -> str:
    parts = []
    for name in ("digest", "patch", "id", "name", "address", "to_version"):
        if hasattr(request, name) and getattr(request, name):
            parts.append(f"{name}={getattr(request, name)}")
    if hasattr(request, "shards") and len(request.shards) and isinstance(request.shards[0], str):
        parts.append("shards=" + ",".join(request.shards))
    return " ".join(parts)


@dataclass
class Malformed:
    """Request bytes that are not the method's message. gRPC would answer INTERNAL before any
    check ran; kept as a value, they are refused after authentication as the caller's error."""

    error: str


def lenient(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as e:  # protobuf's DecodeError, strings that are not UTF-8
            return Malformed(f"{type(e).__name__}: {e}")

    return parse


def well_formed(request, method: str):
    if isinstance(request, Malformed):
        raise invalid("MALFORMED_REQUEST", f"the request is not a valid message for {method} ({request.error})")
    return request


class Pipeline(grpc.ServerInterceptor):
    def __init__(self, tokens: TokenTable | ClientTokensFile, audit: AuditLog, idempotency: Idempotency, mutation_lock: threading.RLock,
                 streams: StreamSlots | None = None):
        self.streams = streams or StreamSlots(workers=32)
        self.tokens = tokens
        self.audit = audit
        self.idem = idempotency
        self.lock = mutation_lock

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        role = required_role(details.method)
        if handler is None or role is None:
            return handler
        method = details.method
        md = dict(details.invocation_metadata or ())
        principal = self.tokens.authenticate(md.get("authorization"))

        mutating = role == OPERATOR

        def admit(context) -> Call:
            err = None
            if principal is None:
                err = ApiError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED",
                               "missing or unknown bearer token (metadata 'authorization: Bearer <token>')")
            elif not allowed(principal, role):
                err = ApiError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED",
                               f"{principal.name} ({principal.role}) may not call {method}; it needs {role}")
            if err is None:
                return Call(method, principal)
            if mutating:  # every attempt to change something is on record, refused ones included
                self.audit.refused((principal or ANONYMOUS).name, context.peer() or "", method,
                                   f"{err.code.name}/{err.reason}")
            raise err

        if handler.unary_unary:
            def unary(request, context):
                try:
                    call = admit(context)
                    if not mutating:  # _mutate checks inside its audit entry
                        well_formed(request, method)
                    token = current_call.set(call)
                    try:
                        return self._mutate(handler.unary_unary, request, context, call) if mutating \
                            else handler.unary_unary(request, context)
                    finally:
                        current_call.reset(token)
                except ApiError as e:
                    context.abort_with_status(to_status(e))
                except sqlite3.Error as e:  # the audit entry itself could not be written
                    refusal = state_unwritable(e)
                    if refusal is None:
                        raise
                    context.abort_with_status(to_status(refusal))

            return grpc.unary_unary_rpc_method_handler(
                traced(method, md, principal, unary), lenient(handler.request_deserializer), handler.response_serializer)

        if handler.unary_stream:
            def unary_stream(request, context):
                try:
                    call = admit(context)
                    well_formed(request, method)
                    current_call.set(call)
                    try:
                        with self.streams.hold(call.principal.name):
                            yield from handler.unary_stream(request, context)
                    except NoStreamSlot as e:
                        raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS", str(e)) from None
                except ApiError as e:
                    context.abort_with_status(to_status(e))

            return grpc.unary_stream_rpc_method_handler(
                traced_stream(method, md, principal, unary_stream), lenient(handler.request_deserializer),
                handler.response_serializer)

        if handler.stream_unary:
            # Streamed upload (ImportPatch): the service reads its request id from the stream and
            # does its own replay and locking around the commit; the audit entry is kept here.
            def stream_unary(request_iter, context):
                try:
                    call = admit(context)
                    token = current_call.set(call)
                    audit_id = self.audit.begin(principal.name, method, source=context.peer() or "")
                    try:
                        resp = handler.stream_unary((well_formed(r, method) for r in request_iter), context)
                    except ApiError as e:
                        self.audit.finish(audit_id, f"{e.code.name}/{e.reason}", e.message, call.target, call.request_id)
                        raise
                    except Exception as e:
                        # the upload stream fails this way when the client cancels or goes away
                        result = "INTERNAL" if context.is_active() else "CANCELLED"
                        self.audit.finish(audit_id, result, repr(e), call.target, call.request_id)
                        raise
                    finally:
                        current_call.reset(token)
                        note_request_id(call.request_id)
                    self._bookkeep(lambda: self.audit.finish(audit_id, "OK", "", call.target, call.request_id), call,
                                   "audit row")
                    return resp
                except ApiError as e:
                    context.abort_with_status(to_status(e))
                except sqlite3.Error as e:
                    refusal = state_unwritable(e)
                    if refusal is None:
                        raise
                    context.abort_with_status(to_status(refusal))

            return grpc.stream_unary_rpc_method_handler(
                traced(method, md, principal, stream_unary), lenient(handler.request_deserializer),
                handler.response_serializer)
        return handler

    def _mutate(self, behavior, request, context, call: Call):
        call.request_id = getattr(request, "request_id", "")
        note_request_id(call.request_id)
        call.target = target_of(request)
        audit_id = self.audit.begin(call.principal.name, call.method, call.request_id, call.target,
                                    source=context.peer() or "")
        try:
            well_formed(request, call.method)
            with (contextlib.nullcontext() if call.method in UNLOCKED_METHODS else self.lock):
                h = request_hash(request) if call.request_id else ""
                if call.request_id:
                    replay = self.idem.replay(call.request_id, call.method, h)
                    if replay is not None:
                        self.audit.finish(audit_id, "OK", "replayed answer of an earlier call", call.target)
                        return replay
                try:
                    resp = behavior(request, context)
                except ApiError as e:
                    if call.request_id:
                        self.idem.save_error(call.request_id, call.method, h, e)
                    raise
                if call.request_id:
                    self._bookkeep(lambda: self.idem.save(call.request_id, call.method, h, resp), call, "request id")
        except ApiError as e:
            self.audit.finish(audit_id, f"{e.code.name}/{e.reason}", e.message, call.target)
            raise
        except Exception as e:
            refusal = state_unwritable(e)
            if refusal is not None:
                self.audit.finish(audit_id, f"{refusal.code.name}/{refusal.reason}", str(e), call.target)
                raise refusal from None
            self.audit.finish(audit_id, "INTERNAL", repr(e), call.target)
            raise ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", f"{type(e).__name__}: {e}") from e
        self._bookkeep(lambda: self.audit.finish(audit_id, "OK", "", call.target), call, "audit row")
        return resp

    @staticmethod
    def _bookkeep(write, call: Call, what: str) -> None:
        """Records made after a change committed. When the disk refuses them the change still happened,
        so the caller is told it did (a refusal would say "nothing was changed"); the audit row stays
        PENDING and becomes INTERRUPTED at the next start, so the change is still on record."""
        try:
            write()
        except sqlite3.Error as e:
            if state_unwritable(e) is None:
                raise
            log.error("%s by %s went through, but its %s could not be written: %s", call.method, call.principal.name,
                      what, e)


def call_principal() -> str:
    call = current_call.get(None)
    return call.principal.name if call else ANONYMOUS.name
