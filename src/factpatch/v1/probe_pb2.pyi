import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProbeOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROBE_OUTCOME_UNSPECIFIED: _ClassVar[ProbeOutcome]
    PROBE_OUTCOME_OK: _ClassVar[ProbeOutcome]
    PROBE_OUTCOME_SKIPPED_SWAPPING: _ClassVar[ProbeOutcome]
    PROBE_OUTCOME_SKIPPED_UNREACHABLE: _ClassVar[ProbeOutcome]
    PROBE_OUTCOME_SKIPPED_BUDGET: _ClassVar[ProbeOutcome]
    PROBE_OUTCOME_FAILED: _ClassVar[ProbeOutcome]

class ConditionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONDITION_TYPE_UNSPECIFIED: _ClassVar[ConditionType]
    CONDITION_TYPE_EDIT_NOT_HOLDING: _ClassVar[ConditionType]
    CONDITION_TYPE_REGRESSION_DRIFT: _ClassVar[ConditionType]
    CONDITION_TYPE_RETRAIN_DUE: _ClassVar[ConditionType]
PROBE_OUTCOME_UNSPECIFIED: ProbeOutcome
PROBE_OUTCOME_OK: ProbeOutcome
PROBE_OUTCOME_SKIPPED_SWAPPING: ProbeOutcome
PROBE_OUTCOME_SKIPPED_UNREACHABLE: ProbeOutcome
PROBE_OUTCOME_SKIPPED_BUDGET: ProbeOutcome
PROBE_OUTCOME_FAILED: ProbeOutcome
CONDITION_TYPE_UNSPECIFIED: ConditionType
CONDITION_TYPE_EDIT_NOT_HOLDING: ConditionType
CONDITION_TYPE_REGRESSION_DRIFT: ConditionType
CONDITION_TYPE_RETRAIN_DUE: ConditionType

class ProbeMiss(_message.Message):
    __slots__ = ("kind", "prompt", "expected", "got")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    GOT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    prompt: str
    expected: str
    got: str
    def __init__(self, kind: _Optional[str] = ..., prompt: _Optional[str] = ..., expected: _Optional[str] = ..., got: _Optional[str] = ...) -> None: ...

class ProbeResult(_message.Message):
    __slots__ = ("shard", "version", "outcome", "detail", "edit_prompts", "edit_hits", "efficacy", "paraphrase_prompts", "paraphrase_hits", "paraphrase_success", "regression_prompts", "regression_agree", "regression_agreement", "duration_seconds", "finished", "misses")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    EDIT_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    EDIT_HITS_FIELD_NUMBER: _ClassVar[int]
    EFFICACY_FIELD_NUMBER: _ClassVar[int]
    PARAPHRASE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    PARAPHRASE_HITS_FIELD_NUMBER: _ClassVar[int]
    PARAPHRASE_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_AGREE_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    shard: str
    version: str
    outcome: ProbeOutcome
    detail: str
    edit_prompts: int
    edit_hits: int
    efficacy: float
    paraphrase_prompts: int
    paraphrase_hits: int
    paraphrase_success: float
    regression_prompts: int
    regression_agree: int
    regression_agreement: float
    duration_seconds: float
    finished: _timestamp_pb2.Timestamp
    misses: _containers.RepeatedCompositeFieldContainer[ProbeMiss]
    def __init__(self, shard: _Optional[str] = ..., version: _Optional[str] = ..., outcome: _Optional[_Union[ProbeOutcome, str]] = ..., detail: _Optional[str] = ..., edit_prompts: _Optional[int] = ..., edit_hits: _Optional[int] = ..., efficacy: _Optional[float] = ..., paraphrase_prompts: _Optional[int] = ..., paraphrase_hits: _Optional[int] = ..., paraphrase_success: _Optional[float] = ..., regression_prompts: _Optional[int] = ..., regression_agree: _Optional[int] = ..., regression_agreement: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., finished: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., misses: _Optional[_Iterable[_Union[ProbeMiss, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("type", "shard", "version", "value", "threshold", "message", "since")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    type: ConditionType
    shard: str
    version: str
    value: float
    threshold: float
    message: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, type: _Optional[_Union[ConditionType, str]] = ..., shard: _Optional[str] = ..., version: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., message: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProbeSchedule(_message.Message):
    __slots__ = ("interval_seconds", "sample_size", "concurrency", "max_busy_share", "min_interval_seconds")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_BUSY_SHARE_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    sample_size: int
    concurrency: int
    max_busy_share: float
    min_interval_seconds: float
    def __init__(self, interval_seconds: _Optional[float] = ..., sample_size: _Optional[int] = ..., concurrency: _Optional[int] = ..., max_busy_share: _Optional[float] = ..., min_interval_seconds: _Optional[float] = ...) -> None: ...

class ProbePolicy(_message.Message):
    __slots__ = ("schedule", "min_probe_efficacy", "max_regression_drift", "max_cumulative_edits", "max_relative_weight_change", "regression_prompts")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    MIN_PROBE_EFFICACY_FIELD_NUMBER: _ClassVar[int]
    MAX_REGRESSION_DRIFT_FIELD_NUMBER: _ClassVar[int]
    MAX_CUMULATIVE_EDITS_FIELD_NUMBER: _ClassVar[int]
    MAX_RELATIVE_WEIGHT_CHANGE_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    schedule: ProbeSchedule
    min_probe_efficacy: float
    max_regression_drift: float
    max_cumulative_edits: int
    max_relative_weight_change: float
    regression_prompts: int
    def __init__(self, schedule: _Optional[_Union[ProbeSchedule, _Mapping]] = ..., min_probe_efficacy: _Optional[float] = ..., max_regression_drift: _Optional[float] = ..., max_cumulative_edits: _Optional[int] = ..., max_relative_weight_change: _Optional[float] = ..., regression_prompts: _Optional[int] = ...) -> None: ...

class ProbeReport(_message.Message):
    __slots__ = ("results", "conditions", "policy")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ProbeResult]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    policy: ProbePolicy
    def __init__(self, results: _Optional[_Iterable[_Union[ProbeResult, _Mapping]]] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., policy: _Optional[_Union[ProbePolicy, _Mapping]] = ...) -> None: ...

class RunProbesRequest(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shards: _Optional[_Iterable[str]] = ...) -> None: ...

class GetProbeReportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EditParaphrases(_message.Message):
    __slots__ = ("subject", "relation", "paraphrases")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    PARAPHRASES_FIELD_NUMBER: _ClassVar[int]
    subject: str
    relation: str
    paraphrases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subject: _Optional[str] = ..., relation: _Optional[str] = ..., paraphrases: _Optional[_Iterable[str]] = ...) -> None: ...

class ProbeSet(_message.Message):
    __slots__ = ("patch", "edits")
    PATCH_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    patch: str
    edits: _containers.RepeatedCompositeFieldContainer[EditParaphrases]
    def __init__(self, patch: _Optional[str] = ..., edits: _Optional[_Iterable[_Union[EditParaphrases, _Mapping]]] = ...) -> None: ...

class SetProbeSetRequest(_message.Message):
    __slots__ = ("request_id", "patch", "edits")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    patch: str
    edits: _containers.RepeatedCompositeFieldContainer[EditParaphrases]
    def __init__(self, request_id: _Optional[str] = ..., patch: _Optional[str] = ..., edits: _Optional[_Iterable[_Union[EditParaphrases, _Mapping]]] = ...) -> None: ...

class GetProbeSetRequest(_message.Message):
    __slots__ = ("patch",)
    PATCH_FIELD_NUMBER: _ClassVar[int]
    patch: str
    def __init__(self, patch: _Optional[str] = ...) -> None: ...

class SetProbeScheduleRequest(_message.Message):
    __slots__ = ("request_id", "schedule")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    schedule: ProbeSchedule
    def __init__(self, request_id: _Optional[str] = ..., schedule: _Optional[_Union[ProbeSchedule, _Mapping]] = ...) -> None: ...
