"""request_id idempotency: the first answer to a request id is stored and given again.

A retried request (same id, same bytes) gets the stored response or the stored refusal (its reason and
metadata too) without a second effect. Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL) are not stored, so a
retry after one runs again.
"""

from __future__ import annotations

import hashlib
import json

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from factpatch.server.api.errors import ApiError, invalid
from factpatch.server.state.db import Database

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}


def request_hash(request: Message | bytes) -> str:
    data = request if isinstance(request, bytes) else request.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()


class Idempotency:
    def __init__(self, db: Database):
        self.db = db

    def replay(self, request_id: str, method: str, req_hash: str) -> Message | None:
        """The stored answer for this request id, None if it is new; raises the stored refusal."""
        row = self.db.request(request_id)
        if row is None:
            return None
        if row["method"] != method or row["request_hash"] != req_hash:
            raise invalid(
                "REQUEST_ID_REUSED",
                f"request_id {request_id!r} was already used for a different request ({row['method']})",
                field="request_id",
            )
        if row["code"]:
            raise ApiError(grpc.StatusCode[row["code"]], row["reason"], row["message"], **json.loads(row["metadata"]))
        desc = descriptor_pool.Default().FindMessageTypeByName(row["response_type"])
        return message_factory.GetMessageClass(desc).FromString(row["response"])

    def save(self, request_id: str, method: str, req_hash: str, response: Message) -> None:
        self.db.save_request(
            request_id, method, req_hash,
            response_type=response.DESCRIPTOR.full_name, response=response.SerializeToString(),
        )

    def save_error(self, request_id: str, method: str, req_hash: str, err: ApiError) -> None:
        if err.code in TRANSIENT or err.reason == "REQUEST_ID_REUSED":
            return
        self.db.save_request(request_id, method, req_hash, code=err.code.name, reason=err.reason, message=err.message,
                             metadata=err.metadata)
