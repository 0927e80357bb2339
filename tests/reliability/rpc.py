"""Every RPC of the control plane, read from proto/factpatch/v1/*.proto, and a way to call any of
them with any bytes, token and shape of stream."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.rpc import error_details_pb2, status_pb2

import factpatch.v1  # noqa: F401  (registers the generated descriptors)
from factpatch.server.api.errors import reason_of

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "factpatch" / "v1"


@dataclass(frozen=True)
class Rpc:
    service: str  # e.g. "PatchService"
    name: str  # e.g. "ImportPatch"
    path: str  # "/factpatch.v1.PatchService/ImportPatch"
    request: Any  # message class
    response: Any
    client_streaming: bool
    server_streaming: bool

    @property
    def key(self) -> str:
        return f"{self.service}/{self.name}"

    def has_field(self, name: str) -> bool:
        return name in self.request.DESCRIPTOR.fields_by_name


def all_rpcs() -> list[Rpc]:
    out = []
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        module = importlib.import_module(f"factpatch.v1.{proto.stem}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append(Rpc(
                    service.name, m.name, f"/{service.full_name}/{m.name}",
                    message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type),
                    m.client_streaming, m.server_streaming,
                ))
    return out


def metadata(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


def call(channel: grpc.Channel, rpc: Rpc, request: Any, token: str | None, timeout: float = 15.0, *,
         raw: bool = False) -> Any:
    """One call. `request` is a message, bytes (raw=True), or for client streaming an iterable of
    them. A server stream answers its first message (WatchRollout would stream until its deadline)."""
    ser = None if raw else rpc.request.SerializeToString
    md = metadata(token)
    if rpc.client_streaming and not rpc.server_streaming:
        fn = channel.stream_unary(rpc.path, request_serializer=ser, response_deserializer=rpc.response.FromString)
        return fn(iter(request), metadata=md, timeout=timeout)
    if rpc.server_streaming and not rpc.client_streaming:
        fn = channel.unary_stream(rpc.path, request_serializer=ser, response_deserializer=rpc.response.FromString)
        stream = fn(request, metadata=md, timeout=timeout)
        try:
            return next(stream, None)
        finally:
            stream.cancel()
    if rpc.client_streaming:
        raise NotImplementedError(f"{rpc.key}: bidirectional streams are not used by this API")
    fn = channel.unary_unary(rpc.path, request_serializer=ser, response_deserializer=rpc.response.FromString)
    return fn(request, metadata=md, timeout=timeout)


def error_info(exc: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """(reason, ErrorInfo metadata) of a failed call; ('', {}) when it carries none."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for d in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    return info.reason, dict(info.metadata)
    return reason_of(exc), {}


def outcome(fn, *args, **kw) -> tuple[str, Any]:
    """('OK', response) or ('CODE/REASON', the RpcError)."""
    try:
        return "OK", fn(*args, **kw)
    except grpc.RpcError as e:
        reason, _ = error_info(e)
        return f"{e.code().name}/{reason}", e
