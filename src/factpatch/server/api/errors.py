"""API errors: a gRPC status code plus a machine-readable reason (google.rpc.ErrorInfo).

Services raise `ApiError`; the interceptor turns it into the call's status with the ErrorInfo in
`grpc-status-details-bin` and the reason again in the plain `factpatch-reason` trailer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "factpatch"
REASON_KEY = "factpatch-reason"
# Messages echo request fields; gRPC drops a call whose trailers pass 8 KiB (the client then sees
# RESOURCE_EXHAUSTED with no reason), so what goes into them is capped, in UTF-8 bytes (the
# message travels twice: percent-encoded and inside the base64 status details).
MAX_MESSAGE_BYTES = 1024
MAX_METADATA_BYTES = 128


def _cap(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    return text if len(data) <= limit else data[: limit - 3].decode("utf-8", "ignore") + "…"


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: str):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}

    def __str__(self) -> str:
        return f"{self.code.name}/{self.reason}: {self.message}"


# SQLite's primary result codes for a write the disk refused: full (ENOSPC, a short write past a file
# size limit) and I/O error (EFBIG and the like when a write cannot start).
_SQLITE_FULL, _SQLITE_IOERR = 13, 10


def state_unwritable(e: BaseException) -> ApiError | None:
    """The API's answer when the state database cannot be written; None for any other error."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is None or (code & 0xFF) not in (_SQLITE_FULL, _SQLITE_IOERR):
        return None
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "STATE_FULL",
                    f"the control plane cannot write its state database ({e}); nothing was changed. Reads still "
                    "work; changes are taken again once the disk has room")


def invalid(reason: str, message: str, **md: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, **md)


def not_found(reason: str, message: str, **md: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, reason, message, **md)


def precondition(reason: str, message: str, **md: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, **md)


@dataclass
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple = field(default=())


def to_status(err: ApiError) -> grpc.Status:
    message = _cap(err.message, MAX_MESSAGE_BYTES)
    metadata = {k: _cap(v, MAX_METADATA_BYTES) for k, v in err.metadata.items()}
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=err.code.value[0], message=message, details=[detail])
    return _Status(
        code=err.code,
        details=message,
        trailing_metadata=(
            ("grpc-status-details-bin", status.SerializeToString()),
            (REASON_KEY, err.reason),
        ),
    )


def reason_of(exc: grpc.RpcError) -> str:
    """The machine-readable reason of a failed call ('' when the server sent none)."""
    for key, value in exc.trailing_metadata() or ():
        if key == REASON_KEY:
            return value
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for d in status.details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info.reason
    return ""
