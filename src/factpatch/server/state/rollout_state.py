"""A rollout's phase and the reasons it stops, as types: one definition for the database, the
reconciler, the services, the gateway's split and `factpatch ctl`.

The values are the proto's `RolloutState` names without their `ROLLOUT_STATE_` prefix (what the
database stores); `to_proto` / `from_proto` convert. Both enums are `StrEnum`s, so stored strings and
members compare equal.
"""

from __future__ import annotations

from enum import StrEnum

from factpatch.v1 import rollout_pb2

PROTO_PREFIX = "ROLLOUT_STATE_"


class RolloutState(StrEnum):
    PROGRESSING = "PROGRESSING"  # the current step's shards are being driven to the patch
    ANALYZING = "ANALYZING"  # the step converged; canary analysis runs over its traffic
    PAUSED = "PAUSED"  # the step converged; waiting for Promote
    SUCCEEDED = "SUCCEEDED"
    ROLLING_BACK = "ROLLING_BACK"  # a refusal, a deadline or failed analysis: back to the previous versions
    FAILED = "FAILED"
    ABORTING = "ABORTING"  # an operator aborted (or reverted the fleet): back to the previous versions
    ABORTED = "ABORTED"


class RolloutReason(StrEnum):
    """Why a rollout paused, rolled back or was aborted (a shard's refusal reason is used as it is)."""

    PROGRESS_DEADLINE = "PROGRESS_DEADLINE"
    ANALYSIS_FAILED = "ANALYSIS_FAILED"
    ANALYSIS_INCONCLUSIVE = "ANALYSIS_INCONCLUSIVE"
    ABORTED_BY_USER = "ABORTED_BY_USER"
    REVERTED_TO_BASE = "REVERTED_TO_BASE"
    ROLLED_BACK = "ROLLED_BACK"  # a Rollback put its shards back on their previous versions
    PROBE_CONDITION = "PROBE_CONDITION"  # a live probe found the patch not holding or breaking other answers


ACTIVE = (RolloutState.PROGRESSING, RolloutState.ANALYZING, RolloutState.PAUSED, RolloutState.ROLLING_BACK,
          RolloutState.ABORTING)
FINAL = (RolloutState.SUCCEEDED, RolloutState.FAILED, RolloutState.ABORTED)
# While a rollout is in these, the gateway splits traffic between the step's shards and the rest.
TRAFFIC_SPLIT = (RolloutState.PROGRESSING, RolloutState.ANALYZING, RolloutState.PAUSED)


def to_proto(state: str) -> int:
    return rollout_pb2.RolloutState.Value(PROTO_PREFIX + RolloutState(state))


def from_proto(value: int) -> RolloutState:
    return RolloutState(rollout_pb2.RolloutState.Name(value).removeprefix(PROTO_PREFIX))
