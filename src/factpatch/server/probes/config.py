"""The probe configuration file (`factpatch serve --probes FILE`, YAML or JSON) and its checks.

    schedule: {interval_seconds: 60, sample_size: 64, concurrency: 2, max_busy_share: 0.05}
    min_interval_seconds: 10          # the floor: a faster schedule is refused
    thresholds: {min_probe_efficacy: 0.9, max_regression_drift: 0.05,
                 max_cumulative_edits: 1000, max_relative_weight_change: 0.05}
    max_tokens: 6
    regression:                       # frozen: unrelated prompts and the base model's answers
      - {prompt: "Oslo is a city in", expect: "Norway"}

Every refusal names its reason (EMPTY_REGRESSION_SET, PROBE_SCHEDULE_TOO_FAST, BAD_PROBE_SCHEDULE,
BAD_PROBE_CONFIG) and the field, and the server does not start with a refused file.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ProbeConfigError(ValueError):
    def __init__(self, reason: str, message: str, field: str = ""):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.field = field


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval_seconds: float = 60.0  # 0 turns scheduled probing off (on-demand runs still work)
    sample_size: int = 64
    concurrency: int = 2
    max_busy_share: float = 0.05


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_probe_efficacy: float = Field(0.9, ge=0, le=1)
    max_regression_drift: float = Field(0.05, ge=0, le=1)
    max_cumulative_edits: int = Field(1000, ge=1)
    max_relative_weight_change: float = Field(0.05, gt=0)


class RegressionPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    expect: str = Field(min_length=1)


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schedule: Schedule = Field(default_factory=Schedule)
    min_interval_seconds: float = Field(10.0, gt=0)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    max_tokens: int = Field(6, ge=1, le=64)
    regression: list[RegressionPrompt]


def check_schedule(s: Schedule, floor: float) -> Schedule:
    """The schedule rules, shared by the file and SetProbeSchedule."""
    if s.interval_seconds < 0:
        raise ProbeConfigError("BAD_PROBE_SCHEDULE", "interval_seconds must be ≥ 0 (0 turns scheduled probing off)",
                               "schedule.interval_seconds")
    if 0 < s.interval_seconds < floor:
        raise ProbeConfigError("PROBE_SCHEDULE_TOO_FAST",
                               f"interval_seconds {s.interval_seconds:g} is below the configured floor of {floor:g} s",
                               "schedule.interval_seconds")
    if not 1 <= s.sample_size <= 10_000:
        raise ProbeConfigError("BAD_PROBE_SCHEDULE", "sample_size must be between 1 and 10000", "schedule.sample_size")
    if not 1 <= s.concurrency <= 64:
        raise ProbeConfigError("BAD_PROBE_SCHEDULE", "concurrency must be between 1 and 64", "schedule.concurrency")
    if not 0 < s.max_busy_share <= 0.5:
        raise ProbeConfigError("BAD_PROBE_SCHEDULE", "max_busy_share must be in (0, 0.5]", "schedule.max_busy_share")
    return s


def parse(data: object) -> ProbeConfig:
    if not isinstance(data, dict):
        raise ProbeConfigError("BAD_PROBE_CONFIG", "the probes file must hold a mapping")
    if not data.get("regression"):
        raise ProbeConfigError("EMPTY_REGRESSION_SET",
                               "the regression set is empty: probes need unrelated prompts with the base's answers "
                               "to measure drift", "regression")
    try:
        cfg = ProbeConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ProbeConfigError("BAD_PROBE_CONFIG", f"{field}: {err['msg']}", field) from None
    check_schedule(cfg.schedule, cfg.min_interval_seconds)
    return cfg


def load(path: str | Path) -> ProbeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ProbeConfigError("BAD_PROBE_CONFIG", f"{p}: {e.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ProbeConfigError("BAD_PROBE_CONFIG", f"{p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from None
    return parse(data)
