import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MonitorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MONITOR_KIND_UNSPECIFIED: _ClassVar[MonitorKind]
    MONITOR_KIND_LITERAL: _ClassVar[MonitorKind]
    MONITOR_KIND_REGEX: _ClassVar[MonitorKind]
    MONITOR_KIND_STALE_VALUE: _ClassVar[MonitorKind]

class MonitorSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MONITOR_SOURCE_UNSPECIFIED: _ClassVar[MonitorSource]
    MONITOR_SOURCE_CONFIG: _ClassVar[MonitorSource]
    MONITOR_SOURCE_API: _ClassVar[MonitorSource]
    MONITOR_SOURCE_PATCH: _ClassVar[MonitorSource]
MONITOR_KIND_UNSPECIFIED: MonitorKind
MONITOR_KIND_LITERAL: MonitorKind
MONITOR_KIND_REGEX: MonitorKind
MONITOR_KIND_STALE_VALUE: MonitorKind
MONITOR_SOURCE_UNSPECIFIED: MonitorSource
MONITOR_SOURCE_CONFIG: MonitorSource
MONITOR_SOURCE_API: MonitorSource
MONITOR_SOURCE_PATCH: MonitorSource

class Monitor(_message.Message):
    __slots__ = ("name", "kind", "pattern", "ignore_case", "scope_subject", "source", "patches", "created_by", "created")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: MonitorKind
    pattern: str
    ignore_case: bool
    scope_subject: str
    source: MonitorSource
    patches: _containers.RepeatedScalarFieldContainer[str]
    created_by: str
    created: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[MonitorKind, str]] = ..., pattern: _Optional[str] = ..., ignore_case: _Optional[bool] = ..., scope_subject: _Optional[str] = ..., source: _Optional[_Union[MonitorSource, str]] = ..., patches: _Optional[_Iterable[str]] = ..., created_by: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateMonitorRequest(_message.Message):
    __slots__ = ("request_id", "monitor")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    monitor: Monitor
    def __init__(self, request_id: _Optional[str] = ..., monitor: _Optional[_Union[Monitor, _Mapping]] = ...) -> None: ...

class ListMonitorsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: MonitorKind
    def __init__(self, kind: _Optional[_Union[MonitorKind, str]] = ...) -> None: ...

class ListMonitorsResponse(_message.Message):
    __slots__ = ("monitors", "limit")
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    monitors: _containers.RepeatedCompositeFieldContainer[Monitor]
    limit: int
    def __init__(self, monitors: _Optional[_Iterable[_Union[Monitor, _Mapping]]] = ..., limit: _Optional[int] = ...) -> None: ...

class DeleteMonitorRequest(_message.Message):
    __slots__ = ("request_id", "name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    name: str
    def __init__(self, request_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteMonitorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
