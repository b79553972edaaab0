"""The one transition function and the filters it builds, on an in-memory MongoDB (mongomock).

What is checked here is query logic only: which documents a compare-and-set change matches and
what it writes. Everything about claims racing, leases expiring and change streams runs against a
real mongod (tests/test_store.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import mongomock
import pytest

from execution_engine.reasons import Reason, is_reason
from execution_engine.states import ENDED_STATES, LEASED_STATES, JobState
from execution_engine.transitions import (
    HISTORY_LIMIT,
    Mark,
    NotificationOutcome,
    end_fields,
    same_state_filter,
    state_update,
    transition,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def jobs() -> Any:
    return mongomock.MongoClient().db.jobs


def write(jobs: Any, change: Any) -> int:
    op = change.as_update(NOW)
    return int(jobs.update_one(op._filter, op._doc).modified_count)


def test_a_new_job_matches_to_be_built_without_an_engine_state(jobs: Any) -> None:
    jobs.insert_one({"_id": "a", "state": "to be built"})
    assert write(jobs, transition("a", JobState.TO_BE_BUILT, JobState.BUILDING, by="t")) == 1
    doc = jobs.find_one({"_id": "a"})
    assert doc["state"] == doc["engine_state"] == "building"
    assert doc["history"][-1]["state"] == "building"


def test_a_client_rewrite_of_state_matches_no_change(jobs: Any) -> None:
    # An ended job put back to 'to be built' by a client: the engine's record says finished.
    jobs.insert_one({"_id": "a", "state": "to be built", "engine_state": "finished"})
    assert write(jobs, transition("a", JobState.TO_BE_BUILT, JobState.BUILDING, by="t")) == 0
    # A waiting job a client set to 'to be submitted' without the engine having built it.
    jobs.insert_one({"_id": "b", "state": "to be submitted"})
    assert write(jobs, transition("b", JobState.TO_BE_SUBMITTED, JobState.SUBMITTING,
                                  by="t")) == 0


def test_an_array_state_is_never_taken_for_a_new_job(jobs: Any) -> None:
    # ``$in`` alone would match an array holding the expected state.
    jobs.insert_one({"_id": "a", "state": ["to be built"]})
    assert write(jobs, transition("a", JobState.TO_BE_BUILT, JobState.BUILDING, by="t")) == 0


def test_the_engine_writes_over_an_array_a_client_put_in_state(jobs: Any) -> None:
    jobs.insert_one({"_id": "b", "state": ["running", "x"], "engine_state": "running"})
    assert write(jobs, transition("b", JobState.RUNNING, JobState.FINISHED, by="t")) == 1
    assert jobs.find_one({"_id": "b"})["state"] == "finished"


def test_end_states_carry_a_reason_and_end_time_and_drop_the_lease(jobs: Any) -> None:
    jobs.insert_one({"_id": "a", "state": "running", "engine_state": "running",
                     "lease": {"token": "x"}})
    write(jobs, transition("a", JobState.RUNNING, JobState.ERROR, by="t", message="boom",
                           reason=Reason.NONZERO_EXIT.value, fields=end_fields(True)))
    doc = jobs.find_one({"_id": "a"})
    assert doc["reason"] == "nonzero_exit" and doc["ended_at"] is not None
    assert "lease" not in doc
    assert doc["status_message"] == "boom"
    assert doc["notification"]["state"] == doc["engine_notification"] == "due"


@pytest.mark.parametrize("state", sorted(ENDED_STATES))
def test_every_end_state_has_a_default_reason(state: JobState) -> None:
    update = state_update(state, by="t", now=NOW)
    assert is_reason(update["$set"]["reason"])


def test_ended_states_stay_ended() -> None:
    for ended in ENDED_STATES:
        for new in JobState:
            with pytest.raises(ValueError, match="is not a job transition"):
                transition("a", ended, new, by="t")


def test_leased_states_keep_their_lease_others_drop_it() -> None:
    for state in JobState:
        update = state_update(state, by="t", now=NOW)
        assert ("lease" in update.get("$unset", {})) is (state not in LEASED_STATES)


def test_history_is_bounded(jobs: Any) -> None:
    jobs.insert_one({"_id": "a", "state": "running", "engine_state": "running"})
    for _ in range(HISTORY_LIMIT + 5):
        write(jobs, transition("a", JobState.RUNNING, JobState.RUNNING, by="t"))
    assert len(jobs.find_one({"_id": "a"})["history"]) == HISTORY_LIMIT


def test_a_put_back_is_not_recorded_and_undoes_the_attempt(jobs: Any) -> None:
    jobs.insert_one({"_id": "a", "state": "submitting", "engine_state": "submitting",
                     "lease": {"token": "t1"}, "submission": {"attempts": 1}})
    change = transition("a", JobState.SUBMITTING, JobState.TO_BE_SUBMITTED, by="t",
                        lease_token="t1", record=False, inc={"submission.attempts": -1})
    assert write(jobs, change) == 1
    doc = jobs.find_one({"_id": "a"})
    assert doc["state"] == "to be submitted" and "history" not in doc
    assert doc["submission"]["attempts"] == 0


def test_a_lease_token_is_required_when_given(jobs: Any) -> None:
    jobs.insert_one({"_id": "a", "state": "building", "engine_state": "building",
                     "lease": {"token": "mine"}})
    assert write(jobs, transition("a", JobState.BUILDING, JobState.ERROR, by="t",
                                  lease_token="theirs")) == 0
    assert write(jobs, transition("a", JobState.BUILDING, JobState.ERROR, by="t",
                                  lease_token="mine")) == 1


def test_marks_keep_the_state_and_need_it(jobs: Any) -> None:
    jobs.insert_one({"_id": "a", "state": "running", "engine_state": "running"})
    assert write(jobs, Mark("a", JobState.PENDING, {"kill.term_at": NOW})) == 0
    assert write(jobs, Mark("a", JobState.RUNNING, {"kill.term_at": NOW})) == 1
    doc = jobs.find_one({"_id": "a"})
    assert doc["state"] == "running" and "history" not in doc


def test_a_notification_outcome_mirrors_its_state_for_the_engine(jobs: Any) -> None:
    jobs.insert_one({"_id": "a", "state": "finished", "lease": {"token": "n"}})
    write(jobs, NotificationOutcome("a", "n", {"notification.state": "sent"}))
    doc = jobs.find_one({"_id": "a"})
    assert doc["engine_notification"] == "sent" and "lease" not in doc


OPERATOR_VALUES: list[Any] = [{"$ne": None}, {"$gt": ""}, {"$in": ["a", "b"]},
                              {"$where": "true"}]


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
    else:
        yield path, value


@pytest.mark.parametrize("value", OPERATOR_VALUES)
def test_a_client_value_in_a_filter_is_only_ever_compared(jobs: Any, value: Any) -> None:
    """A document whose id (or lease token) looks like an operator matches only itself."""
    jobs.insert_one({"_id": "victim", "state": "running", "engine_state": "running",
                     "lease": {"token": "v"}})
    filt = same_state_filter(value, (JobState.RUNNING,), lease_token=value)
    assert filt["_id"] == {"$eq": value}
    assert filt["lease.token"] == {"$eq": value}
    assert jobs.count_documents(filt) == 0
    assert write(jobs, Mark(value, JobState.RUNNING, {"x": 1})) == 0
    assert "x" not in jobs.find_one({"_id": "victim"})
