"""The one way the engine changes a job document: compare-and-set changes, built here.

Every write the engine makes to the jobs collection is one of the changes of this module, turned
into a MongoDB update by :func:`state_update` (state changes) or :func:`Mark` (same-state
bookkeeping), and written by :class:`execution_engine.store.JobStore`. So the rules live in one
place:

* **Compare-and-set.** A change is filtered on the state the writer expects (and, for leased
  steps, its own lease token): a job someone else moved on is left alone.
* **The engine's state is the engine's.** Every state the engine writes goes to both ``state``
  (what clients read) and ``engine_state`` (what the engine last wrote). Filters require both to
  agree, so a client that rewrites ``state`` (an ended job put back to ``to be built``, a running
  job set to ``to be submitted``) cannot make the engine act on it; the sweeper then restores the
  engine's state and records the refused write (``JobStore.enforce_engine_states``). A new job
  has no ``engine_state`` yet: only ``to be built`` is accepted without one.
* **Ended states stay ended**, through the transition table of :mod:`execution_engine.states`.
* **No client value in a filter raw**: ids go in as ``{"$eq": value}``, so a value that looks
  like a query operator is only ever compared.
* **History** gets one entry per recorded change, bounded to :data:`HISTORY_LIMIT` entries; an
  end state always carries a ``reason`` (:mod:`execution_engine.reasons`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from execution_engine.reasons import default_reason
from execution_engine.states import (
    ENDED_STATES,
    LEASED_STATES,
    NEW_ATTEMPT_STATES,
    TRANSITIONS,
    JobState,
)

HISTORY_LIMIT = 100
"""Transitions kept on a job (the oldest are dropped) so that documents stay bounded."""

BY_ID = [("_id", 1)]
"""The index every change to one job uses: named, so that the server does not weigh the state
indexes against it for each write."""

NOTIFY_DUE = "due"
NOTIFY_NONE = "none"


def same_state_filter(job_id: Any, states: Iterable[JobState],
                      lease_token: str | None = None) -> dict[str, Any]:
    """The filter of a job in one of ``states`` by both its ``state`` and its ``engine_state``
    (a job never touched by the engine, in ``to be built``, has no ``engine_state``)."""
    values = [s.value for s in states]
    engine_values: list[Any] = list(values)
    if JobState.TO_BE_BUILT.value in values:
        engine_values.append(None)  # matches a missing field: a new job
    filt: dict[str, Any] = {"_id": {"$eq": job_id}, "state": {"$in": values},
                            "engine_state": {"$in": engine_values}}
    if JobState.TO_BE_BUILT.value in values:
        # A client's array state (``["to be built"]``) would otherwise match ``$in``. (In a
        # state the engine wrote, the engine's next write replaces such a value.)
        filt["state"]["$not"] = {"$type": "array"}
    if lease_token is not None:
        filt["lease.token"] = {"$eq": lease_token}
    return filt


def history_entry(state: JobState, *, by: str, at: datetime, message: str | None = None
                  ) -> dict[str, Any]:
    entry: dict[str, Any] = {"state": state.value, "at": at, "by": by}
    if message:
        entry["message"] = message
    return entry


def push_history(*entries: Mapping[str, Any]) -> dict[str, Any]:
    """The ``$push`` value that appends ``entries`` to a job's bounded history."""
    return {"history": {"$each": list(entries), "$slice": -HISTORY_LIMIT}}


def state_update(
    new: JobState,
    *,
    by: str,
    now: datetime,
    message: str | None = None,
    fields: Mapping[str, Any] | None = None,
    unset: Iterable[str] = (),
    reason: str | None = None,
    record: bool = True,
    inc: Mapping[str, int] | None = None,
    since: tuple[JobState, datetime] | None = None,
) -> dict[str, Any]:
    """The MongoDB update that puts a job in ``new``: the one function every state change of
    the engine goes through (claims, results, put-backs, recovery, refusals).

    Sets ``state`` and ``engine_state``; an end state also sets ``ended_at`` and ``reason``
    (``reason`` or the state's default); leaving a leased state drops the lease; ``record``
    appends a history entry, preceded by one for ``since`` (a state entered without a record
    of its own, such as ``submitting``, whose claims are not recorded).
    """
    sets: dict[str, Any] = {"state": new.value, "engine_state": new.value, "updated_at": now,
                            **(fields or {})}
    if message is not None:
        sets["status_message"] = message
    unsets = dict.fromkeys(unset, "")
    if new in ENDED_STATES:
        sets["ended_at"] = now
        sets["reason"] = reason or default_reason(new)
    if new not in LEASED_STATES:  # the step is over: its lease with it
        unsets["lease"] = ""
    update: dict[str, Any] = {"$set": sets}
    if record:
        entries = [history_entry(new, by=by, at=now, message=message)]
        if since is not None:
            entries.insert(0, history_entry(since[0], by=by, at=since[1]))
        update["$push"] = push_history(*entries)
    if unsets:
        update["$unset"] = unsets
    if inc:
        update["$inc"] = dict(inc)
    return update


def end_fields(notify: bool) -> dict[str, Any]:
    """Fields set with every end state: the notification becomes due exactly once."""
    state = NOTIFY_DUE if notify else NOTIFY_NONE
    return {"notification": {"state": state, "attempts": 0}, "engine_notification": state}


@dataclass(frozen=True)
class Transition:
    """One compare-and-set state change, ready to be written in a batch."""

    job_id: Any
    expected: tuple[JobState, ...]
    new: JobState
    fields: Mapping[str, Any]
    message: str | None
    by: str
    lease_token: str | None = None
    unset: tuple[str, ...] = ()
    reason: str | None = None
    record: bool = True
    inc: Mapping[str, int] = field(default_factory=dict)
    since: tuple[JobState, datetime] | None = None

    def as_update(self, now: datetime) -> UpdateOne:
        return UpdateOne(
            same_state_filter(self.job_id, self.expected, self.lease_token),
            state_update(self.new, by=self.by, now=now, message=self.message,
                         fields=self.fields, unset=self.unset, reason=self.reason,
                         record=self.record, inc=self.inc, since=self.since),
            hint=BY_ID,
        )

    @property
    def makes_notification_due(self) -> bool:
        return self.fields.get("engine_notification") == NOTIFY_DUE


def transition(
    job_id: Any,
    expected: JobState | Iterable[JobState],
    new: JobState,
    *,
    by: str,
    message: str | None = None,
    fields: Mapping[str, Any] | None = None,
    lease_token: str | None = None,
    unset: Iterable[str] = (),
    reason: str | None = None,
    record: bool = True,
    inc: Mapping[str, int] | None = None,
    since: tuple[JobState, datetime] | None = None,
) -> Transition:
    """A state change from one of ``expected`` to ``new``, checked against the transition table.

    ``record=False`` leaves it out of the history (a job put back for lack of a slot comes back
    many times). Raises ValueError for a change the table forbids: that is a bug, never a
    runtime condition.
    """
    expected_t = (expected,) if isinstance(expected, JobState) else tuple(expected)
    for state in expected_t:
        if new not in TRANSITIONS[state]:
            raise ValueError(f"{state.value!r} -> {new.value!r} is not a job transition")
    return Transition(job_id, expected_t, new, dict(fields or {}), message, by, lease_token,
                      tuple(unset), reason, record, dict(inc or {}), since)


ATTEMPT_FIELDS = ("native_id", "exit_code", "submission", "kill", "hold", "route", "system",
                  "host", "submitted_at", "started_at", "ended_at", "reason", "outputs",
                  "usage", "notification", "engine_notification", "outputs_fetched_at",
                  "built_at", "built_command")
"""Fields of one attempt that a new attempt starts without."""


def new_attempt(job_id: Any, expected: JobState, *, by: str, message: str,
                fields: Mapping[str, Any]) -> Transition:
    """The change that sends a job back to ``to be built`` for a new attempt (see
    :data:`~execution_engine.states.NEW_ATTEMPT_STATES`): the only way a job runs again.
    ``fields`` are the new attempt's (``attempt``, ``attempts``, ``requirements``...); the
    previous attempt's own fields are dropped."""
    if expected not in NEW_ATTEMPT_STATES:
        raise ValueError(f"{expected.value!r} -> 'to be built' is not a new attempt")
    return Transition(job_id, (expected,), JobState.TO_BE_BUILT, dict(fields), message, by,
                      unset=tuple(key for key in ATTEMPT_FIELDS if key not in fields))


@dataclass(frozen=True)
class Mark:
    """Bookkeeping on a job that stays in its state (a kill sent, a hold asked, a subjob
    count): filtered on the state, like a transition, but no history entry."""

    job_id: Any
    state: JobState
    fields: Mapping[str, Any]
    unset: tuple[str, ...] = ()

    def as_update(self, now: datetime) -> UpdateOne:
        update: dict[str, Any] = {"$set": {**self.fields}}
        if self.unset:
            update["$unset"] = dict.fromkeys(self.unset, "")
        return UpdateOne(same_state_filter(self.job_id, (self.state,)), update, hint=BY_ID)

    makes_notification_due = False


@dataclass(frozen=True)
class NotificationOutcome:
    """The result of one notification attempt, written under the Notification actor's lease."""

    job_id: Any
    lease_token: str
    fields: Mapping[str, Any]

    def as_update(self, now: datetime) -> UpdateOne:
        sets = dict(self.fields)
        if "notification.state" in sets:
            sets["engine_notification"] = sets["notification.state"]
        return UpdateOne({"_id": {"$eq": self.job_id}, "lease.token": {"$eq": self.lease_token}},
                         {"$set": sets, "$unset": {"lease": ""}}, hint=BY_ID)

    makes_notification_due = False


Change = Transition | Mark | NotificationOutcome
"""Every kind of write the engine makes to a job it already holds."""


def makes_notification_due(changes: Iterable[Change]) -> bool:
    """True when one of ``changes`` ends a job whose notification is then due."""
    return any(change.makes_notification_due for change in changes)


__all__ = [
    "HISTORY_LIMIT",
    "Change",
    "Mark",
    "NotificationOutcome",
    "Transition",
    "end_fields",
    "history_entry",
    "makes_notification_due",
    "new_attempt",
    "push_history",
    "same_state_filter",
    "state_update",
    "transition",
]
