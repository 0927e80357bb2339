from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchRoutingRequest(_message.Message):
    __slots__ = ("gateway_id",)
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    def __init__(self, gateway_id: _Optional[str] = ...) -> None: ...

class RoutedShard(_message.Message):
    __slots__ = ("name", "url", "version", "desired", "healthy", "blocked", "swap_mark")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    SWAP_MARK_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    version: str
    desired: str
    healthy: bool
    blocked: bool
    swap_mark: int
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., version: _Optional[str] = ..., desired: _Optional[str] = ..., healthy: _Optional[bool] = ..., blocked: _Optional[bool] = ..., swap_mark: _Optional[int] = ...) -> None: ...

class RoutedSplit(_message.Message):
    __slots__ = ("rollout_id", "patch", "canary", "canary_share")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    patch: str
    canary: _containers.RepeatedScalarFieldContainer[str]
    canary_share: float
    def __init__(self, rollout_id: _Optional[str] = ..., patch: _Optional[str] = ..., canary: _Optional[_Iterable[str]] = ..., canary_share: _Optional[float] = ...) -> None: ...

class RoutedMonitor(_message.Message):
    __slots__ = ("name", "kind", "pattern", "ignore_case", "scope_subject", "source", "patches")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    pattern: str
    ignore_case: bool
    scope_subject: str
    source: str
    patches: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., pattern: _Optional[str] = ..., ignore_case: _Optional[bool] = ..., scope_subject: _Optional[str] = ..., source: _Optional[str] = ..., patches: _Optional[_Iterable[str]] = ...) -> None: ...

class RoutingSnapshot(_message.Message):
    __slots__ = ("generation", "shards", "splits", "base", "monitors", "max_monitor_labels", "control_plane_id")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    MONITORS_FIELD_NUMBER: _ClassVar[int]
    MAX_MONITOR_LABELS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_PLANE_ID_FIELD_NUMBER: _ClassVar[int]
    generation: int
    shards: _containers.RepeatedCompositeFieldContainer[RoutedShard]
    splits: _containers.RepeatedCompositeFieldContainer[RoutedSplit]
    base: _containers.RepeatedScalarFieldContainer[str]
    monitors: _containers.RepeatedCompositeFieldContainer[RoutedMonitor]
    max_monitor_labels: int
    control_plane_id: str
    def __init__(self, generation: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[RoutedShard, _Mapping]]] = ..., splits: _Optional[_Iterable[_Union[RoutedSplit, _Mapping]]] = ..., base: _Optional[_Iterable[str]] = ..., monitors: _Optional[_Iterable[_Union[RoutedMonitor, _Mapping]]] = ..., max_monitor_labels: _Optional[int] = ..., control_plane_id: _Optional[str] = ...) -> None: ...

class TrafficSample(_message.Message):
    __slots__ = ("at", "version", "shard", "failed", "latency_s", "matched_monitors", "mentioned_subjects", "ttft_s")
    AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    MATCHED_MONITORS_FIELD_NUMBER: _ClassVar[int]
    MENTIONED_SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    at: float
    version: str
    shard: str
    failed: bool
    latency_s: float
    matched_monitors: _containers.RepeatedScalarFieldContainer[str]
    mentioned_subjects: _containers.RepeatedScalarFieldContainer[str]
    ttft_s: float
    def __init__(self, at: _Optional[float] = ..., version: _Optional[str] = ..., shard: _Optional[str] = ..., failed: _Optional[bool] = ..., latency_s: _Optional[float] = ..., matched_monitors: _Optional[_Iterable[str]] = ..., mentioned_subjects: _Optional[_Iterable[str]] = ..., ttft_s: _Optional[float] = ...) -> None: ...

class ReportTrafficRequest(_message.Message):
    __slots__ = ("gateway_id", "samples", "swap_marks")
    class SwapMarksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SWAP_MARKS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    samples: _containers.RepeatedCompositeFieldContainer[TrafficSample]
    swap_marks: _containers.ScalarMap[str, int]
    def __init__(self, gateway_id: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[TrafficSample, _Mapping]]] = ..., swap_marks: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReportTrafficResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
