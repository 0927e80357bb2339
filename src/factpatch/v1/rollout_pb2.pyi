import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_PROGRESSING: _ClassVar[RolloutState]
    ROLLOUT_STATE_PAUSED: _ClassVar[RolloutState]
    ROLLOUT_STATE_SUCCEEDED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ROLLING_BACK: _ClassVar[RolloutState]
    ROLLOUT_STATE_FAILED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ABORTING: _ClassVar[RolloutState]
    ROLLOUT_STATE_ABORTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ANALYZING: _ClassVar[RolloutState]

class AnalysisDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANALYSIS_DECISION_UNSPECIFIED: _ClassVar[AnalysisDecision]
    ANALYSIS_DECISION_RUNNING: _ClassVar[AnalysisDecision]
    ANALYSIS_DECISION_PASS: _ClassVar[AnalysisDecision]
    ANALYSIS_DECISION_FAIL: _ClassVar[AnalysisDecision]
    ANALYSIS_DECISION_INCONCLUSIVE: _ClassVar[AnalysisDecision]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
ROLLOUT_STATE_PROGRESSING: RolloutState
ROLLOUT_STATE_PAUSED: RolloutState
ROLLOUT_STATE_SUCCEEDED: RolloutState
ROLLOUT_STATE_ROLLING_BACK: RolloutState
ROLLOUT_STATE_FAILED: RolloutState
ROLLOUT_STATE_ABORTING: RolloutState
ROLLOUT_STATE_ABORTED: RolloutState
ROLLOUT_STATE_ANALYZING: RolloutState
ANALYSIS_DECISION_UNSPECIFIED: AnalysisDecision
ANALYSIS_DECISION_RUNNING: AnalysisDecision
ANALYSIS_DECISION_PASS: AnalysisDecision
ANALYSIS_DECISION_FAIL: AnalysisDecision
ANALYSIS_DECISION_INCONCLUSIVE: AnalysisDecision

class RolloutStep(_message.Message):
    __slots__ = ("shards", "traffic_percent")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[str]
    traffic_percent: int
    def __init__(self, shards: _Optional[_Iterable[str]] = ..., traffic_percent: _Optional[int] = ...) -> None: ...

class AnalysisGate(_message.Message):
    __slots__ = ("metric", "max_ratio", "min_samples", "max_value", "query")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    metric: str
    max_ratio: float
    min_samples: int
    max_value: float
    query: str
    def __init__(self, metric: _Optional[str] = ..., max_ratio: _Optional[float] = ..., min_samples: _Optional[int] = ..., max_value: _Optional[float] = ..., query: _Optional[str] = ...) -> None: ...

class GateResult(_message.Message):
    __slots__ = ("gate", "canary_value", "base_value", "canary_samples", "base_samples", "outcome", "detail")
    GATE_FIELD_NUMBER: _ClassVar[int]
    CANARY_VALUE_FIELD_NUMBER: _ClassVar[int]
    BASE_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANARY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BASE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    gate: AnalysisGate
    canary_value: float
    base_value: float
    canary_samples: int
    base_samples: int
    outcome: AnalysisDecision
    detail: str
    def __init__(self, gate: _Optional[_Union[AnalysisGate, _Mapping]] = ..., canary_value: _Optional[float] = ..., base_value: _Optional[float] = ..., canary_samples: _Optional[int] = ..., base_samples: _Optional[int] = ..., outcome: _Optional[_Union[AnalysisDecision, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class AnalysisRun(_message.Message):
    __slots__ = ("step", "decision", "window_start", "window_end", "canary_version", "base_versions", "gates", "message", "measurements", "post_promotion")
    STEP_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    POST_PROMOTION_FIELD_NUMBER: _ClassVar[int]
    step: int
    decision: AnalysisDecision
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    canary_version: str
    base_versions: _containers.RepeatedScalarFieldContainer[str]
    gates: _containers.RepeatedCompositeFieldContainer[GateResult]
    message: str
    measurements: _containers.RepeatedCompositeFieldContainer[AnalysisMeasurement]
    post_promotion: bool
    def __init__(self, step: _Optional[int] = ..., decision: _Optional[_Union[AnalysisDecision, str]] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., canary_version: _Optional[str] = ..., base_versions: _Optional[_Iterable[str]] = ..., gates: _Optional[_Iterable[_Union[GateResult, _Mapping]]] = ..., message: _Optional[str] = ..., measurements: _Optional[_Iterable[_Union[AnalysisMeasurement, _Mapping]]] = ..., post_promotion: _Optional[bool] = ...) -> None: ...

class AnalysisMeasurement(_message.Message):
    __slots__ = ("start", "end", "decision", "gates")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    decision: AnalysisDecision
    gates: _containers.RepeatedCompositeFieldContainer[GateResult]
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision: _Optional[_Union[AnalysisDecision, str]] = ..., gates: _Optional[_Iterable[_Union[GateResult, _Mapping]]] = ...) -> None: ...

class ShardProgress(_message.Message):
    __slots__ = ("shard", "previous_version", "desired_version", "active_version", "error_reason", "error")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    shard: str
    previous_version: str
    desired_version: str
    active_version: str
    error_reason: str
    error: str
    def __init__(self, shard: _Optional[str] = ..., previous_version: _Optional[str] = ..., desired_version: _Optional[str] = ..., active_version: _Optional[str] = ..., error_reason: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("id", "patch", "state", "steps", "current_step", "etag", "reason", "message", "shards", "gates", "progress_deadline_seconds", "created_by", "created", "updated", "analysis", "analysis_seconds", "analysis_policy")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_POLICY_FIELD_NUMBER: _ClassVar[int]
    id: str
    patch: str
    state: RolloutState
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    current_step: int
    etag: str
    reason: str
    message: str
    shards: _containers.RepeatedCompositeFieldContainer[ShardProgress]
    gates: _containers.RepeatedCompositeFieldContainer[AnalysisGate]
    progress_deadline_seconds: int
    created_by: str
    created: _timestamp_pb2.Timestamp
    updated: _timestamp_pb2.Timestamp
    analysis: _containers.RepeatedCompositeFieldContainer[AnalysisRun]
    analysis_seconds: int
    analysis_policy: AnalysisPolicy
    def __init__(self, id: _Optional[str] = ..., patch: _Optional[str] = ..., state: _Optional[_Union[RolloutState, str]] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., current_step: _Optional[int] = ..., etag: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., shards: _Optional[_Iterable[_Union[ShardProgress, _Mapping]]] = ..., gates: _Optional[_Iterable[_Union[AnalysisGate, _Mapping]]] = ..., progress_deadline_seconds: _Optional[int] = ..., created_by: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., analysis: _Optional[_Iterable[_Union[AnalysisRun, _Mapping]]] = ..., analysis_seconds: _Optional[int] = ..., analysis_policy: _Optional[_Union[AnalysisPolicy, _Mapping]] = ...) -> None: ...

class AnalysisPolicy(_message.Message):
    __slots__ = ("failure_limit", "inconclusive_limit", "measurement_seconds", "post_promotion_seconds")
    FAILURE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCONCLUSIVE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POST_PROMOTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    failure_limit: int
    inconclusive_limit: int
    measurement_seconds: int
    post_promotion_seconds: int
    def __init__(self, failure_limit: _Optional[int] = ..., inconclusive_limit: _Optional[int] = ..., measurement_seconds: _Optional[int] = ..., post_promotion_seconds: _Optional[int] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("request_id", "patch", "steps", "shards", "canary_shards", "canary_traffic_percent", "gates", "progress_deadline_seconds", "analysis_seconds", "analysis_policy")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARDS_FIELD_NUMBER: _ClassVar[int]
    CANARY_TRAFFIC_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_POLICY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patch: str
    steps: _containers.RepeatedCompositeFieldContainer[RolloutStep]
    shards: _containers.RepeatedScalarFieldContainer[str]
    canary_shards: _containers.RepeatedScalarFieldContainer[str]
    canary_traffic_percent: int
    gates: _containers.RepeatedCompositeFieldContainer[AnalysisGate]
    progress_deadline_seconds: int
    analysis_seconds: int
    analysis_policy: AnalysisPolicy
    def __init__(self, request_id: _Optional[str] = ..., patch: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[RolloutStep, _Mapping]]] = ..., shards: _Optional[_Iterable[str]] = ..., canary_shards: _Optional[_Iterable[str]] = ..., canary_traffic_percent: _Optional[int] = ..., gates: _Optional[_Iterable[_Union[AnalysisGate, _Mapping]]] = ..., progress_deadline_seconds: _Optional[int] = ..., analysis_seconds: _Optional[int] = ..., analysis_policy: _Optional[_Union[AnalysisPolicy, _Mapping]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListRolloutsRequest(_message.Message):
    __slots__ = ("page_size", "active_only", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    active_only: bool
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., active_only: _Optional[bool] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRolloutsResponse(_message.Message):
    __slots__ = ("rollouts", "next_page_token")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    next_page_token: str
    def __init__(self, rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRolloutRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("request_id", "id", "etag")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    etag: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("request_id", "id", "etag", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    id: str
    etag: str
    message: str
    def __init__(self, request_id: _Optional[str] = ..., id: _Optional[str] = ..., etag: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RevertToBaseRequest(_message.Message):
    __slots__ = ("request_id", "shards")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., shards: _Optional[_Iterable[str]] = ...) -> None: ...

class ShardResult(_message.Message):
    __slots__ = ("shard", "ok", "error_reason", "error", "seconds", "version", "previous_version")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    shard: str
    ok: bool
    error_reason: str
    error: str
    seconds: float
    version: str
    previous_version: str
    def __init__(self, shard: _Optional[str] = ..., ok: _Optional[bool] = ..., error_reason: _Optional[str] = ..., error: _Optional[str] = ..., seconds: _Optional[float] = ..., version: _Optional[str] = ..., previous_version: _Optional[str] = ...) -> None: ...

class RevertToBaseResponse(_message.Message):
    __slots__ = ("results", "aborted_rollouts", "seconds")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ShardResult]
    aborted_rollouts: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    def __init__(self, results: _Optional[_Iterable[_Union[ShardResult, _Mapping]]] = ..., aborted_rollouts: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("request_id", "shards", "to_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    shards: _containers.RepeatedScalarFieldContainer[str]
    to_version: str
    def __init__(self, request_id: _Optional[str] = ..., shards: _Optional[_Iterable[str]] = ..., to_version: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("results", "aborted_rollouts", "seconds")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ShardResult]
    aborted_rollouts: _containers.RepeatedScalarFieldContainer[str]
    seconds: float
    def __init__(self, results: _Optional[_Iterable[_Union[ShardResult, _Mapping]]] = ..., aborted_rollouts: _Optional[_Iterable[str]] = ..., seconds: _Optional[float] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("shard", "version", "source", "principal", "time")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    shard: str
    version: str
    source: str
    principal: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, shard: _Optional[str] = ..., version: _Optional[str] = ..., source: _Optional[str] = ..., principal: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListReleasesRequest(_message.Message):
    __slots__ = ("shard", "page_size")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    shard: str
    page_size: int
    def __init__(self, shard: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListReleasesResponse(_message.Message):
    __slots__ = ("releases",)
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    releases: _containers.RepeatedCompositeFieldContainer[Release]
    def __init__(self, releases: _Optional[_Iterable[_Union[Release, _Mapping]]] = ...) -> None: ...
