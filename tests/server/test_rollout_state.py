"""The rollout state enum is the proto's, both ways, and its groups partition the states."""

from __future__ import annotations

import pytest

from factpatch.server.state.rollout_state import (
    ACTIVE,
    FINAL,
    PROTO_PREFIX,
    TRAFFIC_SPLIT,
    RolloutState,
    from_proto,
    to_proto,
)
from factpatch.v1 import rollout_pb2


def test_the_enum_names_every_proto_state_and_nothing_else():
    proto = {name.removeprefix(PROTO_PREFIX) for name in rollout_pb2.RolloutState.keys()} - {"UNSPECIFIED"}
    assert {s.value for s in RolloutState} == proto


def test_states_convert_to_the_proto_and_back():
    for state in RolloutState:
        assert from_proto(to_proto(state)) is state
        assert to_proto(state.value) == to_proto(state)  # what the database stores converts the same


def test_a_state_the_proto_does_not_know_is_refused():
    with pytest.raises(ValueError):
        to_proto("ROLLED_OVER")


def test_every_state_is_active_or_final_and_the_split_is_active():
    assert set(ACTIVE) | set(FINAL) == set(RolloutState)
    assert not set(ACTIVE) & set(FINAL)
    assert set(TRAFFIC_SPLIT) <= set(ACTIVE)
