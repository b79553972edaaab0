"""The job state machine: the states a job goes through and which may follow which.

State names are Mobyle2's, so a portal written for Mobyle2 reads them unchanged. This module is
the only place that decides what may follow what; the store refuses any other transition.

    to be built ──> building ──> to be submitted ──> submitting ──> submitted ──┐
         │             │               │                 │            pending   │
         │             │               │                 │            running   │ (any order)
         │             │               │                 │            hold      │
         └─────────────┴───────────────┴─────────────────┴──> finished | error | killed

A new attempt (a resubmission, ``execution_engine.resubmission``) goes back to ``to be built``
from an active state or, on its client's request, from an ended one: :data:`NEW_ATTEMPT_STATES`.

A split master (a job with a ``splitter``, see ``execution_engine.apps.split``) goes from
``building`` straight to ``submitted`` on the ``split`` pseudo-system: it is never submitted
anywhere, its subjobs are, and its state follows theirs (``execution_engine.apps.masters``).
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job stands. The value is the string stored in the job document."""

    TO_BE_BUILT = "to be built"
    """Written by the client: the engine has not touched the job yet."""
    BUILDING = "building"
    """A Building actor holds the job (under a lease) and prepares its directory and script."""
    TO_BE_SUBMITTED = "to be submitted"
    """Built; waiting for a Submit actor (and, for Local, for a free slot)."""
    SUBMITTING = "submitting"
    """A Submit actor holds the job (under a lease) and hands it to an execution system."""
    SUBMITTED = "submitted"
    """The execution system accepted the job; its native id is stored."""
    PENDING = "pending"
    """Queued by the execution system, not started yet."""
    RUNNING = "running"
    """Running on the execution system."""
    HOLD = "hold"
    """Held or suspended on the execution system (by its operator or by the engine)."""
    FINISHED = "finished"
    """Ended with exit code 0."""
    ERROR = "error"
    """Ended badly: invalid job, build or submission failure, non-zero exit code. The reason is in
    ``status_message``."""
    KILLED = "killed"
    """Ended because cancellation was requested."""

    def __str__(self) -> str:
        return self.value

    @property
    def is_ended(self) -> bool:
        return self in ENDED_STATES

    @property
    def is_active(self) -> bool:
        """Handed to an execution system and not ended: the Status actors watch these."""
        return self in ACTIVE_STATES


ENDED_STATES = frozenset({JobState.FINISHED, JobState.ERROR, JobState.KILLED})
ACTIVE_STATES = frozenset(
    {JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING, JobState.HOLD}
)
LEASED_STATES = frozenset({JobState.BUILDING, JobState.SUBMITTING})
"""States held by one actor under a lease; an expired lease is recovered by the Monitor."""


_ENDS = ENDED_STATES

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.TO_BE_BUILT: frozenset({JobState.BUILDING}) | _ENDS,
    # building -> submitted: only a split master, whose subjobs are its submissions.
    JobState.BUILDING: frozenset({JobState.TO_BE_SUBMITTED, JobState.TO_BE_BUILT,
                                  JobState.SUBMITTED}) | _ENDS,
    JobState.TO_BE_SUBMITTED: frozenset({JobState.SUBMITTING}) | _ENDS,
    # A submission may return straight into any native state, or be put back for lack of room.
    JobState.SUBMITTING: ACTIVE_STATES | {JobState.TO_BE_SUBMITTED} | _ENDS,
    JobState.SUBMITTED: ACTIVE_STATES | _ENDS,
    JobState.PENDING: ACTIVE_STATES | _ENDS,
    JobState.RUNNING: ACTIVE_STATES | _ENDS,
    JobState.HOLD: ACTIVE_STATES | _ENDS,
    JobState.FINISHED: frozenset(),
    JobState.ERROR: frozenset(),
    JobState.KILLED: frozenset(),
}
"""What may follow each state. Ended states are final: a job ends exactly once per attempt."""

NEW_ATTEMPT_STATES = ACTIVE_STATES | ENDED_STATES
"""The states from which a job goes back to ``to be built`` as a new attempt, outside the table:
an attempt that failed for a reason its resubmission policy lists (an active state: the job
never ends in between), or an ended job its client asked to run again (``resubmit_requested``).
Only :func:`execution_engine.transitions.new_attempt` makes that change."""


def can_follow(current: JobState, new: JobState) -> bool:
    """True when ``new`` may follow ``current`` (staying in an active state counts as allowed)."""
    return new in TRANSITIONS[current]


def predecessors(new: JobState) -> list[JobState]:
    """Every state from which ``new`` may be reached, for compare-and-set filters."""
    return [state for state, nexts in TRANSITIONS.items() if new in nexts]


def parse_state(value: object) -> JobState | None:
    """The JobState for a stored value, or None when the value is not a known state."""
    if not isinstance(value, str):
        return None
    try:
        return JobState(value)
    except ValueError:
        return None


ALL_STATE_VALUES = [state.value for state in JobState]
