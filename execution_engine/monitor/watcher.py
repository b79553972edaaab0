"""The change watcher: what happens to the jobs collection, turned into bells.

It reads a MongoDB change stream when the server is a replica set (polling otherwise, and while
the stream is down) and rings the bell of the pool that has work: inserts and ``to be built`` ->
building; ``to be submitted`` -> submit; active states and cancellations -> status; ended states
-> notification. During a burst it polls a few index keys instead of reading the stream
(:mod:`execution_engine.watch` says why and when).

It also acts at once on writes no engine process makes: a job inserted in a state other than
``to be built`` (or none), or a ``state`` set or removed without the engine's ``engine_state``
beside it, makes the store restore the engine's states (``JobStore.enforce_engine_states``); a
job inserted with an ``engine_state`` (the engine never inserts one) is refused
(``JobStore.refuse_forged_insert``); a state no one knows ends the job in ``error``; a
cancellation of a job not yet submitted ends it. During a burst the stream is closed: the writes
no engine process makes (forged inserts, and clients' writes of ``state``) are watched for on
their own, so that no sweep of every live job is needed once the burst is over.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from execution_engine.apps.masters import SplitFollower
from execution_engine.bell import Bell
from execution_engine.resubmission import REQUEST
from execution_engine.states import ACTIVE_STATES, ENDED_STATES, JobState, parse_state
from execution_engine.store import JobStore
from execution_engine.watch import BurstWatch

log = logging.getLogger(__name__)

PIPELINE_STATES: frozenset[JobState | None] = frozenset({
    JobState.TO_BE_BUILT, JobState.BUILDING, JobState.TO_BE_SUBMITTED, JobState.SUBMITTING})
"""States of jobs on their way to an execution system: while some are, a burst goes on."""

INSERTABLE_STATES = (None, JobState.TO_BE_BUILT.value)
"""The only states a job may be inserted in (``None``: no state field)."""

# The stream carries what actors cannot tell each other: new jobs, cancellations, and changes
# that open work for a pool or that no engine process would write (made by clients, by other
# daemons, or by recovery). Transitions an actor makes and hands on itself (building,
# submitting, running...) are left out: they are most of the traffic, and the actor rings the
# next pool directly. The engine writes ``engine_state`` with every ``state``: a ``state``
# written or removed without it is a client's, and is kept in whatever state it names.
_HANDED_ON_STATES = [JobState.BUILDING.value, JobState.SUBMITTING.value,
                     *(s.value for s in ACTIVE_STATES)]
_CLIENT_STATE_UPDATES: list[dict[str, Any]] = [
    {"updateDescription.updatedFields.state": {"$exists": True},
     "updateDescription.updatedFields.engine_state": {"$exists": False}},
    {"updateDescription.removedFields": "state"},
]
"""Updates that set or remove ``state`` without ``engine_state``: a client's (as
:func:`client_wrote_state` tells them), in both pipelines."""
STREAM_PIPELINE: list[dict[str, Any]] = [
    {"$match": {"$or": [
        {"operationType": {"$in": ["insert", "replace"]}},
        {"updateDescription.updatedFields.state": {"$exists": True,
                                                   "$nin": _HANDED_ON_STATES}},
        *_CLIENT_STATE_UPDATES,
        {"updateDescription.updatedFields.cancel_requested": {"$exists": True}},
        {"updateDescription.updatedFields.hold_requested": {"$exists": True}},
        {f"updateDescription.updatedFields.{REQUEST}": {"$exists": True}},
    ]}},
    {"$project": {
        "operationType": 1,
        "clusterTime": 1,
        "documentKey": 1,
        "fullDocument.state": 1,
        "fullDocument.engine_state": 1,
        "fullDocument.cancel_requested": 1,
        "updateDescription.updatedFields.state": 1,
        "updateDescription.updatedFields.engine_state": 1,
        "updateDescription.updatedFields.cancel_requested": 1,
        "updateDescription.updatedFields.hold_requested": 1,
        "fullDocument.hold_requested": 1,
        f"fullDocument.{REQUEST}": 1,
        f"updateDescription.updatedFields.{REQUEST}": 1,
        "updateDescription.removedFields": 1,
    }},
]


BURST_PIPELINE: list[dict[str, Any]] = [
    {"$match": {"$or": [
        {"operationType": "insert", "fullDocument.engine_state": {"$exists": True}},
        {"operationType": "insert", "fullDocument.state": {"$nin": list(INSERTABLE_STATES)}},
        {"operationType": "replace"},
        *_CLIENT_STATE_UPDATES,
    ]}},
    {"$project": {
        "operationType": 1,
        "documentKey": 1,
        "fullDocument.state": 1,
        "fullDocument.engine_state": 1,
        "updateDescription.updatedFields.state": 1,
        "updateDescription.updatedFields.engine_state": 1,
        "updateDescription.removedFields": 1,
    }},
]
"""What the watch of a burst (when the main stream is closed) lets through: the writes no engine
process makes, as :func:`client_wrote_state` tells them, and inserts that carry an
``engine_state`` (the engine never inserts one; nothing else tells them from the engine's jobs).
The burst's own inserts (``to be built``) and the engine's writes stay in the server."""


def pool_for_state(state: JobState | None) -> str | None:
    """Which pool has work when a job enters ``state`` (None: nobody, or unknown state)."""
    if state is JobState.TO_BE_BUILT:
        return "building"
    if state is JobState.TO_BE_SUBMITTED:
        return "submit"
    if state in ACTIVE_STATES:
        return "status"
    if state in ENDED_STATES:
        return "notification"
    return None


def client_wrote_state(change: Mapping[str, Any]) -> bool:
    """True when ``change`` is a write of ``state`` the engine did not make: an insert in a
    state other than the initial one, a replacement, or an update that sets or removes
    ``state`` without setting ``engine_state``."""
    operation = change.get("operationType")
    if operation == "insert":
        doc = change.get("fullDocument") or {}
        if "engine_state" in doc:
            return False  # a forged insert: refused as such (ChangeWatcher.refuse_forged)
        state = doc.get("state")
        return not (state is None or (isinstance(state, str) and state in INSERTABLE_STATES))
    if operation == "replace":
        return True
    description = change.get("updateDescription") or {}
    fields = description.get("updatedFields") or {}
    if "state" in fields and "engine_state" not in fields:
        return True
    return "state" in (description.get("removedFields") or ())


class ChangeWatcher:
    """Rings bells for what the stream (or, during a burst, a poll) shows; see the module."""

    def __init__(self, store: JobStore, bells: Mapping[str, Bell], split: SplitFollower, *,
                 poll_interval: float, guard: Callable[[Callable[[], object]], None],
                 stopping: Callable[[], bool]) -> None:
        self.store = store
        self.bells = bells
        self.split = split
        self.poll_interval = poll_interval
        self._guard = guard
        self._stopping = stopping
        self.burst = BurstWatch()
        self.stream: Any = None
        self.resume_token: Mapping[str, Any] | None = None
        self.polling = False
        """True when the server offers no change stream: the Monitor polls and sweeps often."""
        self.burst_watch: Any = None
        """The watch of clients' writes, open during a burst (:meth:`open_burst_watch`)."""
        self.after_burst = False
        """A burst ended: look for unknown states once the stream is open again."""
        self.burst_watch_lost = False
        """The burst's watch failed to open or broke: clients' writes during the burst are
        looked for by a sweep of every live job once the stream is open again."""

    # ------------------------------------------------------------------ the stream
    def open(self) -> None:
        """Open the stream where it stopped (if not open, and if the server has streams)."""
        if self.stream is not None or self.polling:
            return
        try:
            self.stream = self.store.jobs.watch(STREAM_PIPELINE, max_await_time_ms=100,
                                                resume_after=self.resume_token)
        except OperationFailure as exc:
            if exc.code in (40573, 40415):  # not a replica set / change streams unsupported
                log.info("MongoDB offers no change streams (%s): polling every %.2fs",
                         exc, self.poll_interval)
                self.polling = True
                return
            log.warning("cannot open the change stream: %s", exc)
            return
        except PyMongoError as exc:
            log.warning("cannot open the change stream: %s", exc)
            time.sleep(self.poll_interval)
            return
        # A burst's watch of clients' writes ends once the stream sees them again: it is read
        # once more now (up to a moment after the stream opened, so nothing falls between).
        self.read_burst_watch()
        self.close_burst_watch()
        if self.after_burst:
            self.after_burst = False
            if self.burst_watch_lost:  # what clients wrote during the burst was seen by none
                self.burst_watch_lost = False
                self._guard(lambda: self.store.enforce_engine_states(by="monitor"))
            # Unknown states, through their own indexes (an insert with an array state, say,
            # holding the initial one, is a write the watch cannot tell by its value).
            self._guard(lambda: self.store.fail_unknown_states(by="monitor"))
        # Work may have arrived before the stream opened: let every pool look once.
        for bell in self.bells.values():
            bell.ring()

    def read(self) -> None:
        """Handle what the stream has (waiting up to its await time). A broken stream is
        reopened where it stopped; a burst closes it (reopened afresh after the burst), and
        watches clients' writes from where it stopped until then."""
        if self.stream is None:
            return
        try:
            change = self.stream.try_next()
            while change is not None and not self._stopping():
                self.on_change(change)
                if self.burst.on_event():
                    log.debug("burst: polling instead of reading the change stream")
                    self.open_burst_watch(change.get("clusterTime"))
                    self.stream.close()
                    self.stream, self.resume_token = None, None
                    return
                change = self.stream.try_next() if self.stream.alive else None
            self.resume_token = self.stream.resume_token
        except PyMongoError as exc:
            log.warning("change stream interrupted, polling until it reopens: %s", exc)
            self.stream = None
            time.sleep(self.poll_interval)

    # ------------------------------------------------------------------ clients' writes
    def open_burst_watch(self, since: Timestamp | None) -> None:
        """Watch :data:`BURST_PIPELINE` from ``since`` (the time of the main stream's last
        event; a resume token of a stream with another filter cannot be resumed from): only
        while the main stream is closed, so that the server reads its log once. Should it fail,
        the whole sweep is made once the burst is over, as without a stream."""
        try:
            self.burst_watch = self.store.jobs.watch(BURST_PIPELINE, max_await_time_ms=1,
                                                     start_at_operation_time=since)
        except PyMongoError as exc:
            log.warning("cannot watch clients' writes during the burst: %s", exc)
            self.burst_watch_lost = True

    def read_burst_watch(self) -> None:
        """Act on the writes no engine process made since the last read."""
        if self.burst_watch is None:
            return
        try:
            change = self.burst_watch.try_next()
            while change is not None and not self._stopping():
                self.on_client_write(change)
                change = self.burst_watch.try_next() if self.burst_watch.alive else None
        except PyMongoError as exc:
            log.warning("watch of clients' writes interrupted: %s", exc)
            self.burst_watch_lost = True
            self.close_burst_watch()

    def close_burst_watch(self) -> None:
        if self.burst_watch is not None:
            self.burst_watch.close()
            self.burst_watch = None

    def on_client_write(self, change: Mapping[str, Any]) -> None:
        """Refuse a forged insert, or restore the engine's states over a client's write of
        ``state`` (other events: nothing)."""
        doc = change.get("fullDocument") or {}
        if change.get("operationType") == "insert" and "engine_state" in doc:
            self.refuse_forged(change)
        elif client_wrote_state(change):
            key = (change.get("documentKey") or {}).get("_id")
            self._guard(lambda: self.store.enforce_engine_states(
                by="monitor", job_ids=None if key is None else [key]))

    def refuse_forged(self, change: Mapping[str, Any]) -> None:
        doc = change.get("fullDocument") or {}
        self._guard(functools.partial(
            self.store.refuse_forged_insert, (change.get("documentKey") or {}).get("_id"),
            doc.get("state"), doc.get("engine_state"), by="monitor"))

    def close(self) -> None:
        for stream in (self.stream, self.burst_watch):
            if stream is not None:
                stream.close()
        self.stream = self.burst_watch = None

    def on_change(self, change: Mapping[str, Any]) -> None:
        """Ring the pools one stream event concerns, and act on writes no engine makes."""
        if change["operationType"] in ("insert", "replace"):
            doc = change.get("fullDocument") or {}
            raw_state = doc.get("state")
            cancel = doc.get("cancel_requested")
        else:
            description = change.get("updateDescription") or {}
            fields = description.get("updatedFields") or {}
            raw_state = fields.get("state")
            cancel = fields.get("cancel_requested")
        self.on_client_write(change)
        if raw_state is not None or change["operationType"] != "update":
            self.split.note()  # a subjob may have moved: its master may follow
            state = parse_state(raw_state)
            if state is None:
                self._guard(lambda: self.store.fail_unknown_states(by="monitor"))
            pool = pool_for_state(state)
            if pool is not None:
                self.bells[pool].ring()
            if state in ENDED_STATES:
                self.bells["submit"].ring()  # a slot may have freed
        self.on_requests(change, cancel)
        self._guard(lambda: self.split.tick(self.store))  # at most every min_gap

    def on_requests(self, change: Mapping[str, Any], cancel: Any) -> None:
        """Act on the client requests one stream event writes (``cancel`` is its
        ``cancel_requested``): malformed ones are refused, the others carried out."""
        written = change.get("fullDocument") or fields_of(change)
        key = (change.get("documentKey") or {}).get("_id")
        requests = [cancel, written.get("hold_requested")]
        if key is not None and any(value is not None and not isinstance(value, bool)
                                   for value in requests):
            self._guard(lambda: self.store.refuse_bad_requests([key], by="monitor"))
        if requests[1] is not None:
            self.bells["status"].ring()  # a hold or release to carry out
        if REQUEST in written and key is not None:
            self._guard(lambda: self._resubmit([key]))
        if cancel is True:
            self.split.note()
            self.bells["status"].ring()
            self._guard(lambda: self.store.cancel_unsubmitted(by="monitor"))

    def _resubmit(self, job_ids: list[Any]) -> None:
        """Carry out the resubmission requests of ``job_ids`` (refused ones are recorded)."""
        if self.store.resubmit_requested_jobs(by="monitor", job_ids=job_ids):
            self.bells["building"].ring()

    # ------------------------------------------------------------------ bursts
    def poll_burst(self) -> None:
        """One poll during a burst: ring the pools that have work, act on cancellations and
        unknown states, and tell the burst watch whether the pipeline still holds jobs."""
        self.read_burst_watch()
        try:
            backlog = self.store.backlog()
        except PyMongoError as exc:
            log.warning("MongoDB error during a burst, back to the change stream: %s", exc)
            self.burst.end()
            return
        states = {parse_state(value) for value in backlog.states}
        cancelled = {parse_state(value) for value in backlog.cancelled_states}
        if JobState.TO_BE_BUILT in states:
            self.bells["building"].ring()
        if JobState.TO_BE_SUBMITTED in states:
            self.bells["submit"].ring()
        if backlog.notification_due:
            self.bells["notification"].ring()
        if cancelled & set(ACTIVE_STATES):
            self.bells["status"].ring()
        if cancelled & {JobState.TO_BE_BUILT, JobState.TO_BE_SUBMITTED}:
            self._guard(lambda: self.store.cancel_unsubmitted(by="monitor"))
        if None in states:
            self._guard(lambda: self.store.fail_unknown_states(by="monitor"))
        self.split.note()  # subjobs may have moved
        if self.burst.on_poll(bool(states & PIPELINE_STATES)):
            log.debug("burst over: reading the change stream again")
            self.after_burst = True


def fields_of(change: Mapping[str, Any]) -> Mapping[str, Any]:
    """The fields an update event set (empty for other events)."""
    description = change.get("updateDescription") or {}
    fields: Mapping[str, Any] = description.get("updatedFields") or {}
    return fields
