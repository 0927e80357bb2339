import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARD_HEALTH_UNSPECIFIED: _ClassVar[ShardHealth]
    SHARD_HEALTH_SERVING: _ClassVar[ShardHealth]
    SHARD_HEALTH_SYNCING: _ClassVar[ShardHealth]
    SHARD_HEALTH_UNREACHABLE: _ClassVar[ShardHealth]
    SHARD_HEALTH_ERROR: _ClassVar[ShardHealth]
SHARD_HEALTH_UNSPECIFIED: ShardHealth
SHARD_HEALTH_SERVING: ShardHealth
SHARD_HEALTH_SYNCING: ShardHealth
SHARD_HEALTH_UNREACHABLE: ShardHealth
SHARD_HEALTH_ERROR: ShardHealth

class Shard(_message.Message):
    __slots__ = ("name", "address", "health", "model", "base_fingerprint", "active_version", "desired_version", "last_seen", "last_error_reason", "last_error", "tensor_parallel_size", "applied_at", "swapping", "bytes_held", "agent_address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    SWAPPING_FIELD_NUMBER: _ClassVar[int]
    BYTES_HELD_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    health: ShardHealth
    model: str
    base_fingerprint: str
    active_version: str
    desired_version: str
    last_seen: _timestamp_pb2.Timestamp
    last_error_reason: str
    last_error: str
    tensor_parallel_size: int
    applied_at: str
    swapping: bool
    bytes_held: int
    agent_address: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., health: _Optional[_Union[ShardHealth, str]] = ..., model: _Optional[str] = ..., base_fingerprint: _Optional[str] = ..., active_version: _Optional[str] = ..., desired_version: _Optional[str] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error_reason: _Optional[str] = ..., last_error: _Optional[str] = ..., tensor_parallel_size: _Optional[int] = ..., applied_at: _Optional[str] = ..., swapping: _Optional[bool] = ..., bytes_held: _Optional[int] = ..., agent_address: _Optional[str] = ...) -> None: ...

class RegisterShardRequest(_message.Message):
    __slots__ = ("request_id", "name", "address", "agent_address")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    name: str
    address: str
    agent_address: str
    def __init__(self, request_id: _Optional[str] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., agent_address: _Optional[str] = ...) -> None: ...

class DeregisterShardRequest(_message.Message):
    __slots__ = ("request_id", "name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    name: str
    def __init__(self, request_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeregisterShardResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListShardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListShardsResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    def __init__(self, shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ...) -> None: ...

class GetShardRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
