"""MongoDB access for the engine: the persistence boundary of the jobs collection.

No other module reads or writes the ``jobs`` collection: clients' requests, claims, results,
recovery, refusals, split masters and their subjobs all go through :class:`JobStore`, and every
change it makes to a job's state is built by :mod:`execution_engine.transitions` (one function,
``state_update``), so the "never twice", lease and "the engine's state is the engine's" rules
live in that module and this one.

Every state change is a compare-and-set: an update filtered on the state the writer expects (and,
for leased steps, on its own lease), so that two actors, or two daemons on two hosts sharing one
database, never both act on the same job step. Work is claimed in batches (one query, one
``update_many``, one read back) and results are written with one ``bulk_write`` per batch: a
single journaled write costs about a millisecond, so per-job round trips would cap throughput.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError, WriteError

from execution_engine.job import Job
from execution_engine.jobdoc import request_problems
from execution_engine.reasons import Reason
from execution_engine.resubmission import REQUEST, requested_attempt
from execution_engine.states import (
    ACTIVE_STATES,
    ENDED_STATES,
    LEASED_STATES,
    TRANSITIONS,
    JobState,
    parse_state,
)
from execution_engine.transitions import (
    BY_ID,
    HISTORY_LIMIT,
    NOTIFY_DUE,
    Change,
    Transition,
    end_fields,
    history_entry,
    new_attempt,
    push_history,
    same_state_filter,
    state_update,
    transition,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_DOCUMENT_BYTES = 1 << 20
"""``[engine] max_document_bytes`` by default: larger jobs are refused before any work."""
QUARANTINE_AFTER = 2
"""A job whose step was left by a dead actor this many times is quarantined: ended in
``error`` instead of being handed to yet another actor (a document that kills the actor
handling it must not crash-loop the pool)."""
WRITABLE_BYTES = (16 << 20) - (256 << 10)
"""Documents larger than this are not claimed: the claim's own fields could take them past
MongoDB's 16 MiB limit, and every later write of the engine would fail. (Those larger than
``max_document_bytes`` but under this are claimed and refused with the reason by the builder.)"""
SWEEP_LIMIT = 1000
"""Jobs refused or restored per query of a sweep (the next sweep takes the rest)."""
NOT_ENDED = [s.value for s in JobState if s not in ENDED_STATES]
REQUESTS = ("cancel_requested", "hold_requested")
"""The fields a client may write into a job it already submitted: booleans."""


TOO_LARGE = frozenset({10334, 17419})
"""Server error codes of a write that would take a document past 16 MiB."""

CLAIM_INDEX = "claim"
"""New jobs in ``_id`` order by ``state``."""
WAITING_INDEX = "waiting_by_system"
"""Jobs waiting to be submitted, by system (partial on ``state``)."""
ACTIVE_INDEX = "active_by_system"
"""The jobs a Status actor follows, by system, host and ``engine_state``."""
LIVE_INDEX = "engine_live"
"""Every job the engine holds and has not ended (partial on ``engine_state``)."""
ARRAY_STATE_INDEX = "array_state"
"""The jobs whose ``state`` a client made an array (partial: empty but for those)."""

SUBMISSION_BOOKKEEPING = ("submission", "kill", "native_id", "exit_code", "next_attempt_at")
"""Fields the engine writes from submission on: a job claimed for building starts without
them, whatever a client inserted (a forged ``submission.retry_at`` would hold it back for
ever, a ``native_id`` would name a process it never started)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_job_id(text: str | ObjectId) -> ObjectId | str:
    """The stored ``_id`` for a job id as a user types it (ObjectId hex or a client string)."""
    if isinstance(text, ObjectId):
        return text
    try:
        return ObjectId(text)
    except (InvalidId, TypeError):
        return text


def connect(uri: str, *, timeout: float = 10.0, app_name: str = "execd") -> MongoClient[Any]:
    """A client for ``uri``; UTC-aware datetimes, bounded server selection."""
    return MongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=int(timeout * 1000),
        appname=app_name,
    )


@dataclass(frozen=True)
class Backlog:
    """What the jobs collection holds for the pools, as a poll of the Monitor reads it."""

    states: list[Any]
    """Every ``state`` value present (unknown ones and None included)."""
    cancelled_states: list[Any]
    """The states of jobs whose cancellation nobody has acted on yet."""
    notification_due: bool
    """Some notification is due now."""


class JobStore:
    """The engine's view of its MongoDB database. One per process; not shared across forks."""

    def __init__(self, db: Database[Any], *,
                 max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> None:
        self.db = db
        self.jobs: Collection[Any] = db["jobs"]
        self.leases: Collection[Any] = db["leases"]
        self.daemons: Collection[Any] = db["daemons"]
        self.max_document_bytes = max_document_bytes

    @classmethod
    def open(cls, uri: str, database: str, *, timeout: float = 10.0, app_name: str = "execd",
             max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> JobStore:
        return cls(connect(uri, timeout=timeout, app_name=app_name)[database],
                   max_document_bytes=max_document_bytes)

    def close(self) -> None:
        self.db.client.close()

    # ------------------------------------------------------------------ schema
    def ensure_indexes(self) -> None:
        """Indexes for every query the engine makes and the docs invite (idempotent)."""
        # Leases are found through the state index (few jobs are building or submitting at
        # once) and claims read back by _id: no index on lease fields, which change at every
        # claim and release and would cost an index write each time.
        self.jobs.create_index([("state", ASCENDING), ("_id", ASCENDING)], name=CLAIM_INDEX)
        # The Submit actor claims waiting jobs of the systems that have room: one index range
        # per system, merged in _id order, so that a saturated system's backlog is never read.
        self.jobs.create_index(
            [("system", ASCENDING), ("_id", ASCENDING)], name=WAITING_INDEX,
            partialFilterExpression={"state": JobState.TO_BE_SUBMITTED.value},
        )
        # The Status actors follow what the engine handed to a system, whatever a client may
        # have written into ``state`` since.
        self.jobs.create_index(
            [("system", ASCENDING), ("host", ASCENDING), ("engine_state", ASCENDING)],
            name=ACTIVE_INDEX,
            partialFilterExpression={"engine_state": {"$in": [s.value for s in ACTIVE_STATES]}},
        )
        # The sweep that restores the engine's state after a client rewrote it.
        # Keyed on fields that do not change while a job lives (MongoDB refuses a partial index
        # on _id alone), so that its steps cost no index write: only its first and its end. No
        # query names these keys: the sweep names the index.
        self.jobs.create_index(
            [("_id", ASCENDING), ("owner", ASCENDING)], name=LIVE_INDEX,
            partialFilterExpression={"engine_state": {"$in": NOT_ENDED}},
        )
        # A state that is an array is no state: found through an index of its own, since no
        # index bounds can select arrays (a query for them would read every job ever run).
        self.jobs.create_index(
            [("_id", ASCENDING), ("state", ASCENDING)], name=ARRAY_STATE_INDEX,
            partialFilterExpression={"state": {"$type": "array"}},
        )
        self.jobs.create_index(
            [("notification.state", ASCENDING), ("notification.next_attempt", ASCENDING)],
            name="notification_pending",
            partialFilterExpression={"notification.state": {"$in": ["due", "sending"]}},
        )
        self.jobs.create_index(
            [("cancel_requested", ASCENDING), ("state", ASCENDING)],
            name="cancel",
            partialFilterExpression={"cancel_requested": True},
        )
        self.jobs.create_index(
            [("hold_requested", ASCENDING), ("engine_state", ASCENDING)],
            name="hold",
            partialFilterExpression={"hold_requested": {"$exists": True}},
        )
        self.jobs.create_index([(REQUEST, ASCENDING)], name="resubmit",
                               partialFilterExpression={REQUEST: {"$exists": True}})
        self.jobs.create_index([("parent", ASCENDING), ("index", ASCENDING)], name="subjobs",
                               partialFilterExpression={"parent": {"$exists": True}})
        # Portals list one user's or one project's jobs, newest first.
        self.jobs.create_index([("owner", ASCENDING), ("_id", DESCENDING)], name="by_owner")
        self.jobs.create_index([("project", ASCENDING), ("_id", DESCENDING)],
                               name="by_project")

    # ------------------------------------------------------------------ client side
    def insert(self, doc: Mapping[str, Any]) -> Any:
        return self.jobs.insert_one(dict(doc)).inserted_id

    def get(self, job_id: Any) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self.jobs.find_one({"_id": {"$eq": as_job_id(job_id)}})
        return doc

    def request_cancel(self, job_id: Any) -> dict[str, Any] | None:
        """Ask for a job to be cancelled (the documented client update); the new document."""
        doc: dict[str, Any] | None = self.jobs.find_one_and_update(
            {"_id": {"$eq": as_job_id(job_id)}},
            {"$set": {"cancel_requested": True}},
            return_document=ReturnDocument.AFTER,
        )
        return doc

    def request_resubmit(self, job_id: Any, request: Any) -> dict[str, Any] | None:
        """Ask for an ended job to run again (the documented client update
        ``resubmit_requested``, already checked); the new document, None when there is no
        such ended job (by the engine's record)."""
        doc: dict[str, Any] | None = self.jobs.find_one_and_update(
            {"_id": {"$eq": as_job_id(job_id)},
             "engine_state": {"$in": [s.value for s in ENDED_STATES]}},
            {"$set": {REQUEST: request}},
            return_document=ReturnDocument.AFTER,
        )
        return doc

    def counts(self) -> dict[str, int]:
        """Number of jobs per stored state value."""
        pipeline = [{"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        return {str(row["_id"]): row["n"] for row in self.jobs.aggregate(pipeline)}

    def find_jobs(self, *, owner: str | None = None, state: str | None = None,
                  project: str | None = None, parent: Any = None, subjobs: bool = True,
                  limit: int = 50) -> list[dict[str, Any]]:
        """Jobs matching every given field, newest first, at most ``limit`` (0: all), without
        ``history`` and ``outputs``. Values are compared with ``$eq``: never an operator.
        ``parent`` lists one split job's subjobs; ``subjobs=False`` leaves every subjob out."""
        query: dict[str, Any] = {field: {"$eq": value} for field, value in
                                 (("owner", owner), ("state", state), ("project", project))
                                 if value is not None}
        if parent is not None:
            query["parent"] = {"$eq": parent}
        elif not subjobs:
            query["parent"] = {"$exists": False}
        cursor = self.jobs.find(query, {"history": 0, "outputs": 0}).sort("_id", -1)
        return list(cursor.limit(max(0, limit)))

    def job_states(self, job_ids: Sequence[Any] | None = None, *,
                   updated_since: datetime | None = None, limit: int = 10000
                   ) -> list[dict[str, Any]]:
        """``{_id, state, status_message, updated_at}`` of the jobs ``job_ids`` (all jobs when
        None) updated at or after ``updated_since`` (any time when None): what a client
        polling for state changes reads."""
        query: dict[str, Any] = {}
        if job_ids is not None:
            query["_id"] = {"$in": [as_job_id(j) for j in job_ids]}
        if updated_since is not None:
            query["updated_at"] = {"$gte": updated_since}
        fields = {"state": 1, "status_message": 1, "updated_at": 1}
        return list(self.jobs.find(query, fields).limit(max(0, limit)))

    def watch_job_states(self, job_ids: Sequence[Any] | None = None, *,
                         max_await_seconds: float = 1.0) -> Any:
        """A change stream (``pymongo`` ``ChangeStream``, to be closed) of the inserts,
        replacements and updates that set a ``state``, of ``job_ids`` or of every job. Raises
        ``OperationFailure`` where change streams are not available (a standalone mongod)."""
        match: dict[str, Any] = {"$or": [
            {"operationType": {"$in": ["insert", "replace"]}},
            {"operationType": "update", "updateDescription.updatedFields.state": {"$exists": True}},
        ]}
        if job_ids is not None:
            match["documentKey._id"] = {"$in": [as_job_id(j) for j in job_ids]}
        project = {"operationType": 1, "documentKey": 1, "clusterTime": 1,
                   "fullDocument.state": 1, "fullDocument.status_message": 1,
                   "updateDescription.updatedFields.state": 1,
                   "updateDescription.updatedFields.status_message": 1}
        return self.jobs.watch([{"$match": match}, {"$project": project}],
                               max_await_time_ms=int(max_await_seconds * 1000))

    def request_hold(self, job_id: Any, hold: bool) -> dict[str, Any] | None:
        """Ask for a job to be held (``hold=True``) or released (the documented client update
        ``hold_requested``); the new document, None when there is no such job."""
        doc: dict[str, Any] | None = self.jobs.find_one_and_update(
            {"_id": {"$eq": as_job_id(job_id)}},
            {"$set": {"hold_requested": bool(hold)}},
            return_document=ReturnDocument.AFTER,
        )
        return doc

    def mark_outputs_fetched(self, job_id: Any, state: str, paths: Sequence[str]) -> bool:
        """Record that the outputs ``paths`` of an ended job were fetched and verified now;
        False when the job is no longer in ``state``."""
        now = utcnow()
        result = self.jobs.update_one(
            {"_id": {"$eq": as_job_id(job_id)}, "state": {"$eq": state}},
            {"$set": {"outputs.$[out].fetched_at": now, "outputs_fetched_at": now}},
            array_filters=[{"out.path": {"$in": list(paths)}}],
        )
        return result.matched_count == 1

    def daemon_document(self, instance: str) -> dict[str, Any] | None:
        """The ``daemons`` document of one daemon instance (what ``execd status`` shows)."""
        doc: dict[str, Any] | None = self.daemons.find_one({"_id": {"$eq": instance}})
        return doc

    # ------------------------------------------------------------------ claims
    def claim(
        self,
        current: JobState,
        new: JobState,
        *,
        owner: str,
        limit: int,
        lease_seconds: float,
        extra_filter: Mapping[str, Any] | None = None,
        inc: Mapping[str, int] | None = None,
        record: bool = True,
    ) -> list[dict[str, Any]]:
        """Atomically move up to ``limit`` jobs from ``current`` to the leased state ``new`` for
        ``owner``; returns the claimed documents (possibly fewer, or none, when others won).
        ``record=False`` leaves the claim out of the job's history.

        Only jobs whose ``engine_state`` agrees with ``current`` are taken (a client's rewrite
        of ``state`` claims nothing), and a new job only when it can be worked on at all: not
        larger than ``max_document_bytes`` and with a history the engine can append to (the
        sweep refuses the others, :meth:`enforce_engine_states`). A job claimed for building
        starts without the fields of :data:`SUBMISSION_BOOKKEEPING`. A job recovered from a
        dead actor (``recoveries``) is claimed alone, once no other job waits.
        """
        if new not in TRANSITIONS[current]:
            raise ValueError(f"{current.value!r} -> {new.value!r} is not a job transition")
        now = utcnow()
        token = uuid.uuid4().hex
        filt: dict[str, Any] = {**same_state_filter(None, (current,)), **(extra_filter or {})}
        del filt["_id"]
        if current is JobState.TO_BE_BUILT:
            filt["$and"] = [*filt.get("$and", []), *self._workable(sized=False),
                            _attempt_due(now)]
        update = state_update(new, by=owner, now=now, record=record, inc=inc, fields={
            "lease": {"owner": owner, "token": token,
                      "until": now + timedelta(seconds=lease_seconds)},
        }, unset=SUBMISSION_BOOKKEEPING if current is JobState.TO_BE_BUILT else ())
        # A job whose actor died holding it may be what killed it: it is claimed alone, and
        # only when no other job waits, so that a second death quarantines it and no other.
        # New jobs are read in _id order off the claim index; waiting ones by system, off the
        # per-system index (which skips the backlog of a full system). Named: the planner
        # would otherwise weigh every index on the state fields at each claim.
        index = {JobState.TO_BE_BUILT: CLAIM_INDEX,
                 JobState.TO_BE_SUBMITTED: WAITING_INDEX}.get(current)
        docs = self._claim({**filt, "recoveries": {"$exists": False}}, update, token, limit,
                           index)
        if not docs:
            docs = self._claim({**filt, "recoveries": {"$exists": True}}, update, token, 1,
                               index)
        return docs

    @staticmethod
    def _workable(*, sized: bool = True) -> list[dict[str, Any]]:
        """Conditions a new job must meet before any actor works on it. Without ``sized``,
        the size is left out (costly to evaluate per document: a claim meets a document too
        large for its write as a write error, :data:`TOO_LARGE`, and refuses it then)."""
        conditions: list[dict[str, Any]] = [
            {"$or": [{"history": {"$exists": False}}, {"history": {"$type": "array"}}]}]
        if sized:
            conditions.append({"$expr": {"$lt": [{"$bsonSize": "$$ROOT"}, WRITABLE_BYTES]}})
        return conditions

    def claim_notifications(self, *, owner: str, limit: int, lease_seconds: float
                            ) -> list[dict[str, Any]]:
        """Claim ended jobs whose notification is due (and not leased by a live actor)."""
        now = utcnow()
        token = uuid.uuid4().hex
        filt = _notification_due(now)
        update = {
            "$set": {
                "notification.state": "sending",
                "engine_notification": "sending",
                "lease": {"owner": owner, "token": token,
                          "until": now + timedelta(seconds=lease_seconds)},
            }
        }
        return self._claim(filt, update, token, limit)

    def _claim(self, filt: Mapping[str, Any], update: Mapping[str, Any], token: str, limit: int,
               index: str | None = None) -> list[dict[str, Any]]:
        """Read candidates, take them with one ``update_many``, and return the ones taken.

        When the update took every candidate (the usual case), the documents already read are
        returned with the claim's ``$set`` and top-level ``$unset`` applied (other operators,
        such as ``$inc`` and ``$push``, are not reflected); when others took some, ours are
        read back by token.
        """
        cursor = self.jobs.find(filt, {"history": 0}).sort("_id", 1).limit(limit)
        docs = list(cursor if index is None else cursor.hint(index))
        if not docs:
            return []
        ids = [d["_id"] for d in docs]
        # The filter is repeated so that a job another actor took in between is left alone.
        try:
            taken = self.jobs.update_many({**filt, "_id": {"$in": ids}}, update,
                                          hint=BY_ID).modified_count
        except WriteError as exc:
            if exc.code not in TOO_LARGE:
                raise
            # A new job so close to 16 MiB that the claim's fields do not fit: refused (the
            # update stopped there; the jobs it took before are ours, read back below).
            self.refuse_unworkable(by=update["$set"]["lease"]["owner"], job_ids=ids)
            taken = -1
        if taken != len(ids):
            return list(self.jobs.find({"_id": {"$in": ids}, "lease.token": token},
                                       {"history": 0}))
        for doc in docs:
            for key, value in update["$set"].items():
                _set_path(doc, key, value)
            for key in update.get("$unset", ()):
                doc.pop(key, None)
        return docs

    def renew_leases(self, job_ids: Sequence[Any], token: str, seconds: float) -> None:
        """Extend the leases of claimed jobs that this claim (``token``) still holds."""
        self.jobs.update_many({"_id": {"$in": list(job_ids)}, "lease.token": token},
                              {"$set": {"lease.until": utcnow() + timedelta(seconds=seconds)}})

    def apply(self, changes: Sequence[Change]) -> int:
        """Write a batch of compare-and-set changes; returns how many took effect. A change whose
        job is no longer in the expected state is skipped (someone else moved it on).

        A change the server refuses (a client made the document unwritable: a ``history`` that
        is not a list, a document grown to the size limit) does not fail the batch: the job is
        ended in ``error`` with the reason (:meth:`_refuse_unwritable`).
        """
        if not changes:
            return 0
        now = utcnow()
        ops = [change.as_update(now) for change in changes]
        try:
            return self.jobs.bulk_write(ops, ordered=False).modified_count
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            done = int(exc.details.get("nModified", 0))
        for error in errors:
            change = changes[error["index"]]
            log.warning("job %s: the database refused the engine's write (%s)",
                        change.job_id, error.get("errmsg"))
            done += self._refuse_unwritable(change.job_id, str(error.get("errmsg")), by="store")
        return done

    def release(self, jobs: Iterable[Mapping[str, Any]], back_to: JobState, *, by: str,
                message: str) -> int:
        """Give claimed jobs back (rollback at warm stop, or no capacity); lease-checked."""
        changes: list[Change] = []
        for doc in jobs:
            job = Job(doc)
            if job.state is None:
                continue
            changes.append(transition(job.id, job.state, back_to, by=by, message=message,
                                      lease_token=job.lease_token))
        return self.apply(changes)

    # ------------------------------------------------------------------ recovery
    def expire_leases_of(self, owner_prefix: str) -> None:
        """End the leases of every actor whose owner id starts with ``owner_prefix`` (a dead
        actor or a dead daemon), so that recovery picks their jobs up at once."""
        past = utcnow() - timedelta(seconds=1)
        owned = {"lease.owner": {"$regex": f"^{re.escape(owner_prefix)}"}}
        # Filtered on the states that hold leases, so that the indexes serve the query.
        for held in ({"state": {"$in": [s.value for s in LEASED_STATES]}},
                     {"notification.state": "sending"}):
            self.jobs.update_many({**held, **owned}, {"$set": {"lease.until": past}})
        self.leases.update_many(
            {"owner": {"$regex": f"^{re.escape(owner_prefix)}"}},
            {"$set": {"until": past}},
        )

    def recover_expired(self, *, by: str) -> dict[str, int]:
        """Put jobs whose lease expired back where another actor can take them.

        ``building`` goes back to ``to be built`` (building is idempotent); ``submitting`` goes
        back to ``to be submitted`` marked for recovery, so that the next Submit actor first asks
        the execution system whether the job is already there before submitting it again.
        A job left this way :data:`QUARANTINE_AFTER` times is ended in ``error`` instead: it may
        be what kills its actors. A notification whose lease expired is due again.
        """
        now = utcnow()
        counts = {}
        for state, back, extra in (
            (JobState.BUILDING, JobState.TO_BE_BUILT, {}),
            (JobState.SUBMITTING, JobState.TO_BE_SUBMITTED, {"submission.recover": True}),
        ):
            expired = {**same_state_filter(None, (state,)), "lease.until": {"$lt": now}}
            del expired["_id"]
            message = (f"quarantined: the actor holding it while {state.value} died "
                       f"{QUARANTINE_AFTER} times")
            quarantined = self.jobs.update_many(
                {**expired, "recoveries": {"$gte": QUARANTINE_AFTER - 1}},
                state_update(JobState.ERROR, by=by, now=now, message=message,
                             reason=Reason.INTERNAL_ERROR.value, fields=end_fields(True)),
            ).modified_count
            if quarantined:
                log.error("%d jobs quarantined: %s", quarantined, message)
            result = self.jobs.update_many(expired, state_update(
                back, by=by, now=now, message=f"lease expired while {state.value}; recovered",
                fields=extra, inc={"recoveries": 1}))
            counts[state.value] = result.modified_count
        result = self.jobs.update_many(
            {"notification.state": "sending", "lease.until": {"$lt": now}},
            {"$set": {"notification.state": NOTIFY_DUE, "engine_notification": NOTIFY_DUE},
             "$unset": {"lease": ""}},
        )
        counts["notification"] = result.modified_count
        return counts

    def cancel_unsubmitted(self, *, by: str) -> int:
        """End as ``killed`` every job cancelled before it reached an execution system (a job
        whose submission is in doubt is left to the Submit actor, which asks the system)."""
        changes: list[Change] = []
        for doc in self.jobs.find(
            {"cancel_requested": True,
             "state": {"$in": [JobState.TO_BE_BUILT.value, JobState.TO_BE_SUBMITTED.value]},
             "submission.recover": {"$ne": True}},
            {"_id": 1, "state": 1, "notify": 1},
        ):
            job = Job(doc)
            if job.state is None:
                continue
            changes.append(transition(job.id, job.state, JobState.KILLED, by=by,
                                      message="cancelled before submission",
                                      reason=Reason.CANCELLED.value,
                                      fields=end_fields(job.notify)))
        return self.apply(changes)

    # ------------------------------------------------------------------ refusals
    def fail_unknown_states(self, *, by: str, limit: int = SWEEP_LIMIT) -> int:
        """End in ``error`` every job whose state is missing or not a known state (a job the
        engine holds gets its state back instead: :meth:`enforce_engine_states`)."""
        known = [s.value for s in JobState]
        done = 0
        # Two queries, each reading only the keys of what it looks for (as one ``$or`` the
        # array test would make the server read every document, ended ones included).
        for query, index in (({"state": {"$nin": known}}, CLAIM_INDEX),
                             ({"state": {"$type": "array"}}, ARRAY_STATE_INDEX)):
            cursor = self.jobs.find(query, _ENFORCE_PROJECTION).hint(index)
            for doc in cursor.limit(max(1, limit - done)):
                done += self._enforce_one(doc, by=by)
        return done

    def enforce_engine_states(self, *, by: str, job_ids: Iterable[Any] | None = None) -> int:
        """Undo what clients did to ``state``; returns how many jobs were corrected.

        * a job the engine holds whose ``state`` a client changed gets the engine's state back,
          and the refused write is recorded in its history and ``refused_writes``;
        * a job inserted in any state but ``to be built`` (or none) is ended in ``error``
          (reason ``invalid_document``): only a new job may be inserted;
        * a new job the engine cannot work on (larger than ``max_document_bytes``, or a
          ``history`` that is not a list) is ended in ``error`` naming the field.

        With ``job_ids`` (the change stream saw them written) only those jobs are looked at;
        without, a sweep of every job not ended by either ``state`` or ``engine_state``.
        """
        differs = {"$expr": {"$ne": ["$state", "$engine_state"]}}
        queries: list[tuple[dict[str, Any], str | None]]  # each with the index it reads
        if job_ids is not None:
            queries = [({"_id": {"$in": list(job_ids)}}, None)]
        else:
            queries = [
                ({"engine_state": {"$in": NOT_ENDED}, **differs}, LIVE_INDEX),
                ({"state": {"$in": NOT_ENDED}, "engine_state": {"$exists": True}, **differs},
                 CLAIM_INDEX),
                ({"state": {"$in": NOT_ENDED[1:]}, "engine_state": {"$exists": False}},
                 CLAIM_INDEX),
            ]
        done = 0
        for query, index in queries:
            cursor = self.jobs.find(query, _ENFORCE_PROJECTION).limit(SWEEP_LIMIT)
            for doc in cursor if index is None else cursor.hint(index):
                done += self._enforce_one(doc, by=by)
        done += self.refuse_unworkable(by=by, job_ids=job_ids)
        return done

    def refuse_forged_insert(self, job_id: Any, state: Any, engine_state: Any, *, by: str
                             ) -> int:
        """End in ``error`` (reason ``invalid_document``) a job a client inserted with an
        ``engine_state`` of its own: the engine never inserts one, so the job's states are
        not the engine's, whatever they say. A job the engine has moved on since (its states
        are no longer the inserted ones) is left to the engine."""
        message = (f"engine_state {_shown(engine_state)} was inserted by a client (with state "
                   f"{_shown(state)}): a new job must be inserted with state 'to be built' "
                   "and no engine_state")
        update = state_update(JobState.ERROR, by=by, now=utcnow(), message=message,
                              reason=Reason.INVALID_DOCUMENT.value, fields=end_fields(True))
        filt = {"_id": {"$eq": job_id}, "state": {"$eq": state},
                "engine_state": {"$eq": engine_state}}
        result = self.jobs.update_one(filt, update)
        if not result.modified_count:  # the history may be no list: start it afresh
            result = self.jobs.update_one(filt, _with_fresh_history(update))
        if result.modified_count:
            log.warning("job %s refused: %s", job_id, message)
        return result.modified_count

    def refuse_bad_requests(self, job_ids: Iterable[Any], *, by: str) -> int:
        """Remove client requests that are not booleans (``cancel_requested: "yes"``, ``1``),
        recording each refusal in the job's history, so that none is silently ignored."""
        now = utcnow()
        done = 0
        for doc in self.jobs.find({"_id": {"$in": list(job_ids)}, "$or": [
                {name: {"$exists": True, "$not": {"$type": "bool"}}} for name in REQUESTS]},
                {"state": 1, "engine_state": 1, **dict.fromkeys(REQUESTS, 1)}):
            bad = {name: doc[name] for name in REQUESTS
                   if name in doc and not isinstance(doc[name], bool)}
            message = "refused " + ", ".join(f"{name} {_shown(value)} (must be true or false)"
                                             for name, value in bad.items())
            state = parse_state(doc.get("engine_state")) or parse_state(doc.get("state"))
            entry = {"state": state.value if state else None, "at": now, "by": by,
                     "message": message}
            done += self.jobs.update_one(
                {"_id": {"$eq": doc["_id"]}, **{name: {"$eq": value} for name, value in
                                               bad.items()}},
                {"$unset": dict.fromkeys(bad, ""),
                 "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}}},
            ).modified_count
            log.warning("job %s: %s", doc["_id"], message)
        return done

    def resubmit_requested_jobs(self, *, by: str, job_ids: Iterable[Any] | None = None) -> int:
        """Start a new attempt of each ended job whose client set ``resubmit_requested``
        (see :mod:`execution_engine.resubmission`); returns how many were started.

        A request on a job that has not ended, on a split job, or that breaks the job
        contract, is removed and its refusal recorded in the job's history: never silently
        ignored, never run twice."""
        query: dict[str, Any] = {REQUEST: {"$exists": True}}
        if job_ids is not None:
            query["_id"] = {"$in": list(job_ids)}
        started = 0
        for doc in self.jobs.find(query, {"history": 0, "outputs": 0}).limit(SWEEP_LIMIT):
            request = doc[REQUEST]
            state = parse_state(doc.get("engine_state"))
            problems = request_problems(REQUEST, request)
            if state not in ENDED_STATES:
                problems.append(f"the job is {_shown(doc.get('engine_state') or 'new')}: "
                                "only an ended job runs again")
            elif doc.get("splitter") is not None:
                problems.append("a split job runs again through its subjobs")
            if problems:
                self._refuse_request(doc, REQUEST, "; ".join(problems), by=by)
                continue
            assert state is not None
            fields, message = requested_attempt(doc, request, now=utcnow())
            change = new_attempt(doc["_id"], state, by=by, message=message, fields=fields)
            change = dataclasses.replace(change, unset=(*change.unset, REQUEST,
                                                        "cancel_requested"))
            started += self.apply([change])
            log.info("job %s: %s", doc["_id"], message)
        return started

    def _refuse_request(self, doc: Mapping[str, Any], name: str, why: str, *, by: str) -> None:
        """Remove the client request ``name`` of ``doc``, recording why in its history."""
        state = parse_state(doc.get("engine_state")) or parse_state(doc.get("state"))
        message = f"refused {name} {_shown(doc[name])}: {why}"
        entry = {"state": state.value if state else None, "at": utcnow(), "by": by,
                 "message": message}
        self.jobs.update_one({"_id": {"$eq": doc["_id"]}, name: {"$eq": doc[name]}},
                             {"$unset": {name: ""}, "$push": push_history(entry)})
        log.warning("job %s: %s", doc["_id"], message)

    def _enforce_one(self, doc: Mapping[str, Any], *, by: str) -> int:
        """Correct one job whose ``state`` is not the engine's (see enforce_engine_states)."""
        value, engine = doc.get("state"), doc.get("engine_state")
        if (value is not None and value == engine) or (
                engine is None and value == JobState.TO_BE_BUILT.value):
            return 0
        now = utcnow()
        filt = {"_id": {"$eq": doc["_id"]}, "state": {"$eq": value},
                "engine_state": {"$eq": engine}}
        engine_state = parse_state(engine)
        if engine_state in ENDED_STATES and "reason" not in doc:
            engine_state = None  # no job the engine ended lacks a reason: a forged document
        elif (engine_state is JobState.TO_BE_BUILT and "recoveries" not in doc
              and "attempt" not in doc):
            # The engine writes 'to be built' only when it recovers a job or starts a new
            # attempt of it.
            engine_state = None
        if engine_state is not None:
            message = (f"refused a client write of state {_shown(value)}: the job is "
                       f"{engine_state.value!r} (only documented requests change a job)")
            entry = history_entry(engine_state, by=by, at=now, message=message)
            refused = {"at": now, "state": _shown(value)}
            result = self.jobs.update_one(filt, {
                "$set": {"state": engine_state.value, "updated_at": now},
                "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT},
                          "refused_writes": {"$each": [refused], "$slice": -HISTORY_LIMIT}},
            })
            log.warning("job %s: %s", doc["_id"], message)
        else:
            if value is None:
                reason = "state is missing (a new job must have state 'to be built')"
            elif parse_state(value) is None:
                reason = (f"state {_shown(value)} is not a job state (a new job must have "
                          "state 'to be built')")
            else:
                reason = (f"state {_shown(value)}: a new job must be inserted with state "
                          "'to be built'; the engine sets every other state")
            update = state_update(JobState.ERROR, by=by, now=now, message=reason,
                                  reason=Reason.INVALID_DOCUMENT.value, fields=end_fields(True))
            result = self.jobs.update_one(filt, update)
            if not result.modified_count:  # the history was no list: start it afresh
                result = self.jobs.update_one(filt, _with_fresh_history(update))
        return result.modified_count

    def refuse_unworkable(self, *, by: str, job_ids: Iterable[Any] | None = None) -> int:
        """End in ``error`` the new jobs no actor may claim (see :meth:`claim`); the Building
        actor asks whenever its claim finds nothing (it then reads only such jobs)."""
        new = {"state": JobState.TO_BE_BUILT.value,
               "engine_state": {"$in": [None, JobState.TO_BE_BUILT.value]},
               "$nor": [{"$and": self._workable()}]}
        if job_ids is not None:
            new["_id"] = {"$in": list(job_ids)}
        done = 0
        for doc in self.jobs.find(new, {"_id": 1}).limit(SWEEP_LIMIT):
            done += self._refuse_unwritable(doc["_id"], "", by=by)
        return done

    def _refuse_unwritable(self, job_id: Any, why: str, *, by: str) -> int:
        """End in ``error`` a job the engine cannot write to as it is; keeps what can be kept.

        A document over the size limit keeps its identifying fields only (the rest is dropped,
        their names listed in ``dropped_fields``): it could not be written otherwise.
        """
        doc = self.jobs.find_one({"_id": {"$eq": job_id}})
        if doc is None or parse_state(doc.get("engine_state")) in ENDED_STATES:
            return 0
        now = utcnow()
        size = _bson_size(doc)
        limit = min(self.max_document_bytes, WRITABLE_BYTES)
        if size >= limit:
            message = (f"document is {size} bytes, more than the {limit} "
                       "allowed ([engine] max_document_bytes)")
        elif not isinstance(doc.get("history", []), list):
            message = "history: written by the engine only (it must be a list)"
        else:
            message = f"the database refused the engine's write: {why[:300]}"
        update = _with_fresh_history(state_update(
            JobState.ERROR, by=by, now=now, message=message,
            reason=Reason.INVALID_DOCUMENT.value, fields=end_fields(True)))
        if size >= WRITABLE_BYTES:
            kept = {k: v for k, v in doc.items() if k in _KEPT_WHEN_TOO_LARGE
                    and _bson_size({k: v}) < 4096}
            dropped = sorted(k for k in doc if k not in kept)
            replacement = {**kept, **update["$set"], "dropped_fields": dropped[:100]}
            replacement.pop("lease", None)
            result = self.jobs.replace_one({"_id": {"$eq": job_id}, "state": doc.get("state")},
                                           replacement)
        else:
            result = self.jobs.update_one({"_id": {"$eq": job_id},
                                           "state": {"$eq": doc.get("state")}}, update)
        log.warning("job %s refused: %s", job_id, message)
        return result.modified_count

    # ------------------------------------------------------------------ Monitor's polls
    def backlog(self) -> Backlog:
        """What the pools have to do, from indexes only: the Monitor asks many times a second
        during a burst (``execution_engine.watch``) instead of reading the change stream."""
        now = utcnow()
        return Backlog(
            states=self.jobs.distinct("state"),  # a distinct scan of the claim index
            cancelled_states=self.jobs.distinct("state", {
                "cancel_requested": True,
                "state": {"$nin": [s.value for s in ENDED_STATES]},
                "kill.term_at": {"$exists": False},
            }),
            notification_due=self.jobs.find_one(_notification_due(now), {"_id": 1}) is not None,
        )

    # ------------------------------------------------------------------ status side
    def active_jobs(self, system: str, host: str | None) -> list[dict[str, Any]]:
        """Jobs the engine handed to ``system`` (on ``host`` for host-bound systems) and that
        have not ended, by the engine's own record."""
        filt: dict[str, Any] = {
            "system": system,
            "engine_state": {"$in": [s.value for s in ACTIVE_STATES]},
        }
        if host is not None:
            filt["host"] = host
        return list(self.jobs.find(filt, {"history": 0, "outputs": 0}).hint(ACTIVE_INDEX))

    # ------------------------------------------------------------------ split jobs
    def insert_subjobs(self, docs: list[dict[str, Any]]) -> list[Any]:
        """Insert a split master's subjobs; those already there (a master built again) are
        kept. Returns the ids that are neither new nor already this master's subjobs."""
        if not docs:
            return []
        for start in range(0, len(docs), 1000):
            with contextlib.suppress(BulkWriteError):  # duplicates: checked below
                self.jobs.insert_many(docs[start:start + 1000], ordered=False)
        ids = [d["_id"] for d in docs]
        ours = {d["_id"] for d in self.jobs.find(
            {"_id": {"$in": ids}, "parent": {"$eq": docs[0]["parent"]}}, {"_id": 1})}
        return [i for i in ids if i not in ours]

    def split_master(self, master_id: Any) -> dict[str, Any] | None:
        """What a subjob's build needs of its master."""
        doc: dict[str, Any] | None = self.jobs.find_one(
            {"_id": {"$eq": master_id}}, {"app": 1, "project": 1, "splitter": 1, "subjobs": 1})
        return doc

    def active_split_masters(self, split_system: str) -> list[dict[str, Any]]:
        return list(self.jobs.find(
            {"system": split_system, "engine_state": {"$in": [s.value for s in ACTIVE_STATES]}},
            {"state": 1, "engine_state": 1, "cancel_requested": 1, "notify": 1, "subjobs": 1,
             "kill": 1}))

    def subjob_state_counts(self, subjob_ids: Mapping[Any, list[Any]]
                            ) -> dict[Any, dict[str, int]]:
        """Per master, how many of its subjobs (``subjob_ids[master]``, the ids the engine gave
        them: a document merely claiming a master as ``parent`` does not count) are in each
        state."""
        counts: dict[Any, dict[str, int]] = {master: {} for master in subjob_ids}
        wanted = [i for ids in subjob_ids.values() for i in ids]
        for row in self.jobs.aggregate([
            {"$match": {"_id": {"$in": wanted}, "parent": {"$in": list(subjob_ids)}}},
            {"$group": {"_id": {"parent": "$parent", "state": "$engine_state"},
                        "n": {"$sum": 1}}},
        ]):
            state = row["_id"].get("state") or JobState.TO_BE_BUILT.value
            bucket = counts[row["_id"]["parent"]]
            bucket[str(state)] = bucket.get(str(state), 0) + row["n"]
        return counts

    def cancel_subjobs(self, master_id: Any, subjob_ids: list[Any]) -> int:
        """Pass a master's cancellation on to its subjobs not yet ended; marks the master."""
        result = self.jobs.update_many(
            {"_id": {"$in": subjob_ids}, "parent": {"$eq": master_id},
             "state": {"$nin": [s.value for s in ENDED_STATES]},
             "cancel_requested": {"$ne": True}},
            {"$set": {"cancel_requested": True}})
        return result.modified_count

    def failed_subjobs(self, master_id: Any, subjob_ids: list[Any]) -> list[dict[str, Any]]:
        return list(self.jobs.find(
            {"_id": {"$in": subjob_ids}, "parent": {"$eq": master_id},
             "engine_state": {"$in": [JobState.ERROR.value, JobState.KILLED.value]}},
            {"index": 1, "state": 1, "status_message": 1, "exit_code": 1},
        ).sort("index", 1))

    def subjob_outputs(self, master_id: Any, subjob_ids: list[Any]
                       ) -> Iterator[dict[str, Any]]:
        """Each subjob's index and outputs, in index order."""
        yield from self.jobs.find({"_id": {"$in": subjob_ids}, "parent": {"$eq": master_id}},
                                  {"index": 1, "outputs": 1}).sort("index", 1)

    # ------------------------------------------------------------------ named leases
    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` (e.g. status polling of one system) for ``owner``.
        True when ``owner`` holds it afterwards."""
        now = utcnow()
        try:
            doc = self.leases.find_one_and_update(
                {"_id": name, "$or": [{"owner": owner}, {"until": {"$lt": now}}]},
                {"$set": {"owner": owner, "until": now + timedelta(seconds=seconds)}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # held by someone else (the upsert raced with their document)
        return doc is not None and doc.get("owner") == owner

    def drop_leases(self, owner: str) -> None:
        self.leases.delete_many({"owner": owner})

    # ------------------------------------------------------------------ daemons
    def register_daemon(self, instance: str, info: Mapping[str, Any]) -> None:
        self.daemons.replace_one({"_id": instance}, {"_id": instance, **info,
                                                     "heartbeat_at": utcnow()}, upsert=True)

    def heartbeat(self, instance: str) -> None:
        self.daemons.update_one({"_id": instance}, {"$set": {"heartbeat_at": utcnow()}})

    def update_daemon(self, instance: str, fields: Mapping[str, Any]) -> None:
        """Set ``fields`` on the daemon's document (e.g. its actor table) and beat its heart."""
        self.daemons.update_one({"_id": instance},
                                {"$set": {**fields, "heartbeat_at": utcnow()}})

    def unregister_daemon(self, instance: str) -> None:
        self.daemons.delete_one({"_id": instance})

    def daemons_on(self, host: str) -> list[dict[str, Any]]:
        return list(self.daemons.find({"host": host}))


_KEPT_WHEN_TOO_LARGE = ("_id", "owner", "name", "project", "notify", "parent", "index")


_ENFORCE_PROJECTION = {"_id": 1, "state": 1, "engine_state": 1, "reason": 1, "recoveries": 1,
                       "attempt": 1}
"""What :meth:`JobStore._enforce_one` reads of a job."""


def _attempt_due(now: datetime) -> dict[str, Any]:
    """A job to be built is due unless it is a resubmission waiting for ``next_attempt_at``
    (the engine's own: on a new job, which has no ``engine_state``, the field is ignored)."""
    return {"$or": [{"engine_state": {"$exists": False}},
                    {"next_attempt_at": {"$not": {"$gt": now}}}]}


def _notification_due(now: datetime) -> dict[str, Any]:
    """The filter of jobs whose notification is due at ``now`` (not waiting for a retry), as
    the engine made it due (a client's ``notification.state`` alone does not count)."""
    return {
        "notification.state": NOTIFY_DUE,
        "engine_notification": NOTIFY_DUE,
        "$or": [{"notification.next_attempt": {"$exists": False}},
                {"notification.next_attempt": {"$lte": now}}],
    }


def _with_fresh_history(update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` with its history entry as the whole history (the old one was no list)."""
    fresh = {key: dict(value) for key, value in update.items() if key != "$push"}
    entries = update.get("$push", {}).get("history", {}).get("$each", [])
    fresh.setdefault("$set", {})["history"] = list(entries)
    return fresh


def _bson_size(doc: Mapping[str, Any]) -> int:
    import bson

    try:
        return len(bson.encode(dict(doc)))
    except (bson.errors.InvalidDocument, OverflowError):
        return 1 << 30


def _shown(value: object) -> str:
    """A client's value as a message quotes it: short, one line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """``doc[a][b] = value`` for ``"a.b"``, as ``$set`` does."""
    *parents, last = dotted.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


__all__ = [
    "HISTORY_LIMIT",
    "Backlog",
    "JobStore",
    "PyMongoError",
    "Transition",
    "WriteError",
    "as_job_id",
    "connect",
    "end_fields",
    "transition",
    "utcnow",
]
