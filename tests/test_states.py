"""The transition table: ended states are final, and every state can end."""

from __future__ import annotations

import pytest

from execution_engine.states import (
    ACTIVE_STATES,
    ENDED_STATES,
    TRANSITIONS,
    JobState,
    can_follow,
    parse_state,
    predecessors,
)
from execution_engine.store import transition


def test_state_values_are_mobyle2_names() -> None:
    assert [s.value for s in JobState] == [
        "to be built", "building", "to be submitted", "submitting", "submitted", "pending",
        "running", "hold", "finished", "error", "killed"]


def test_every_state_is_in_the_table_and_ended_states_are_final() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in ENDED_STATES:
        assert TRANSITIONS[state] == frozenset()


@pytest.mark.parametrize("state", [s for s in JobState if s not in ENDED_STATES])
def test_every_unended_state_can_end_in_error_or_be_killed(state: JobState) -> None:
    assert can_follow(state, JobState.ERROR)
    assert can_follow(state, JobState.KILLED)


def test_a_job_cannot_skip_building_or_go_back_after_submission() -> None:
    assert not can_follow(JobState.TO_BE_BUILT, JobState.TO_BE_SUBMITTED)
    assert not can_follow(JobState.TO_BE_BUILT, JobState.RUNNING)
    for active in ACTIVE_STATES:
        assert not can_follow(active, JobState.TO_BE_SUBMITTED)
        assert not can_follow(active, JobState.BUILDING)


def test_forbidden_transition_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="'finished' -> 'running' is not a job transition"):
        transition(1, JobState.FINISHED, JobState.RUNNING, by="test")


def test_predecessors_and_parse() -> None:
    assert JobState.SUBMITTING in predecessors(JobState.RUNNING)
    assert JobState.TO_BE_BUILT not in predecessors(JobState.RUNNING)
    assert parse_state("running") is JobState.RUNNING
    assert parse_state("queued") is None
    assert parse_state(None) is None
