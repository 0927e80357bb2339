import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Edit(_message.Message):
    __slots__ = ("subject", "relation", "prompt", "target_new", "target_old", "provenance_json")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TARGET_NEW_FIELD_NUMBER: _ClassVar[int]
    TARGET_OLD_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    subject: str
    relation: str
    prompt: str
    target_new: str
    target_old: str
    provenance_json: str
    def __init__(self, subject: _Optional[str] = ..., relation: _Optional[str] = ..., prompt: _Optional[str] = ..., target_new: _Optional[str] = ..., target_old: _Optional[str] = ..., provenance_json: _Optional[str] = ...) -> None: ...

class Patch(_message.Message):
    __slots__ = ("digest", "size_bytes", "base_model", "base_fingerprint", "method", "layers", "tensors", "edits", "parent", "created", "imported_at", "manifest_json", "deployed_on", "signed_by", "has_signature")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_ON_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    HAS_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    base_model: str
    base_fingerprint: str
    method: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    tensors: _containers.RepeatedScalarFieldContainer[str]
    edits: _containers.RepeatedCompositeFieldContainer[Edit]
    parent: str
    created: str
    imported_at: _timestamp_pb2.Timestamp
    manifest_json: str
    deployed_on: _containers.RepeatedScalarFieldContainer[str]
    signed_by: str
    has_signature: bool
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., base_model: _Optional[str] = ..., base_fingerprint: _Optional[str] = ..., method: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., tensors: _Optional[_Iterable[str]] = ..., edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ..., parent: _Optional[str] = ..., created: _Optional[str] = ..., imported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., manifest_json: _Optional[str] = ..., deployed_on: _Optional[_Iterable[str]] = ..., signed_by: _Optional[str] = ..., has_signature: _Optional[bool] = ...) -> None: ...
