import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from factpatch.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreatePatchRequest(_message.Message):
    __slots__ = ("request_id", "spec", "method", "hparams_json")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    spec: str
    method: str
    hparams_json: str
    def __init__(self, request_id: _Optional[str] = ..., spec: _Optional[str] = ..., method: _Optional[str] = ..., hparams_json: _Optional[str] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("name", "done", "stage", "progress", "message", "patch", "error", "created", "updated")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    done: bool
    stage: str
    progress: float
    message: str
    patch: _common_pb2.Patch
    error: _status_pb2.Status
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., done: _Optional[bool] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., patch: _Optional[_Union[_common_pb2.Patch, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ImportPatchHeader(_message.Message):
    __slots__ = ("request_id", "expected_digest", "size_bytes", "signature")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    expected_digest: str
    size_bytes: int
    signature: bytes
    def __init__(self, request_id: _Optional[str] = ..., expected_digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ImportPatchRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportPatchHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ImportPatchHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetPatchRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class ListPatchesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPatchesResponse(_message.Message):
    __slots__ = ("patches", "next_page_token")
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patches: _containers.RepeatedCompositeFieldContainer[_common_pb2.Patch]
    next_page_token: str
    def __init__(self, patches: _Optional[_Iterable[_Union[_common_pb2.Patch, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeletePatchRequest(_message.Message):
    __slots__ = ("request_id", "digest")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    digest: str
    def __init__(self, request_id: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class DeletePatchResponse(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class GetPatchBlobRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class PatchBlobChunk(_message.Message):
    __slots__ = ("data", "total_size", "digest")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_size: int
    digest: str
    def __init__(self, data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...
