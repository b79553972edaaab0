"""MongoDB access for the engine: jobs, their state changes, leases and claims.

Every state change is a compare-and-set: an update filtered on the state the writer expects (and,
for leased steps, on its own lease), so that two actors, or two daemons on two hosts sharing one
database, never both act on the same job step. Work is claimed in batches (one query, one
``update_many``, one read back) and results are written with one ``bulk_write`` per batch: a
single journaled write costs about a millisecond, so per-job round trips would cap throughput.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from execution_engine.errors import ExecdError
from execution_engine.states import (
    ACTIVE_STATES,
    ENDED_STATES,
    LEASED_STATES,
    TRANSITIONS,
    JobState,
    predecessors,
)

HISTORY_LIMIT = 100
"""Transitions kept on a job (the oldest are dropped) so that documents stay bounded."""


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

    def as_update(self, now: datetime) -> UpdateOne:
        filt: dict[str, Any] = {"_id": self.job_id,
                                "state": {"$in": [s.value for s in self.expected]}}
        if self.lease_token is not None:
            filt["lease.token"] = self.lease_token
        sets: dict[str, Any] = {"state": self.new.value, "updated_at": now, **self.fields}
        if self.message is not None:
            sets["status_message"] = self.message
        unset = dict.fromkeys(self.unset, "")
        if self.new in ENDED_STATES:
            sets["ended_at"] = now
        if self.new not in LEASED_STATES:  # the step is over: its lease with it
            unset["lease"] = ""
        entry = {"state": self.new.value, "at": now, "by": self.by}
        if self.message:
            entry["message"] = self.message
        update: dict[str, Any] = {
            "$set": sets,
            "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}},
        }
        if unset:
            update["$unset"] = unset
        return UpdateOne(filt, update)


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
) -> Transition:
    """A state change from one of ``expected`` to ``new``, checked against the transition table.

    Raises ValueError for a change the table forbids: that is a bug, never a runtime condition.
    """
    expected_t = (expected,) if isinstance(expected, JobState) else tuple(expected)
    for state in expected_t:
        if new not in TRANSITIONS[state]:
            raise ValueError(f"{state.value!r} -> {new.value!r} is not a job transition")
    return Transition(
        job_id, expected_t, new, dict(fields or {}), message, by, lease_token, tuple(unset)
    )


def end_fields(notify: bool) -> dict[str, Any]:
    """Fields set with every end state: the notification becomes due exactly once."""
    return {"notification": {"state": "due" if notify else "none", "attempts": 0}}


def makes_notification_due(changes: Iterable[Transition | UpdateOne]) -> bool:
    """True when one of ``changes`` ends a job whose notification is then due."""
    return any(isinstance(change, Transition)
               and change.fields.get("notification", {}).get("state") == "due"
               for change in changes)


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

    def __init__(self, db: Database[Any]) -> None:
        self.db = db
        self.jobs: Collection[Any] = db["jobs"]
        self.leases: Collection[Any] = db["leases"]
        self.daemons: Collection[Any] = db["daemons"]

    @classmethod
    def open(cls, uri: str, database: str, *, timeout: float = 10.0, app_name: str = "execd"
             ) -> JobStore:
        return cls(connect(uri, timeout=timeout, app_name=app_name)[database])

    def close(self) -> None:
        self.db.client.close()

    # ------------------------------------------------------------------ schema
    def ensure_indexes(self) -> None:
        """Indexes for every query the engine makes (idempotent)."""
        # Leases are found through the state index (few jobs are building or submitting at
        # once) and claims read back by _id: no index on lease fields, which change at every
        # claim and release and would cost an index write each time.
        self.jobs.create_index([("state", ASCENDING), ("_id", ASCENDING)], name="claim")
        # The Submit actor claims waiting jobs of the systems that have room: one index range
        # per system, merged in _id order, so that a saturated system's backlog is never read.
        self.jobs.create_index(
            [("system", ASCENDING), ("_id", ASCENDING)], name="waiting_by_system",
            partialFilterExpression={"state": JobState.TO_BE_SUBMITTED.value},
        )
        self.jobs.create_index(
            [("system", ASCENDING), ("host", ASCENDING), ("state", ASCENDING)],
            name="active_by_system",
            partialFilterExpression={"state": {"$in": [s.value for s in ACTIVE_STATES]}},
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

    # ------------------------------------------------------------------ client side
    def insert(self, doc: Mapping[str, Any]) -> Any:
        return self.jobs.insert_one(dict(doc)).inserted_id

    def get(self, job_id: Any) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self.jobs.find_one({"_id": as_job_id(job_id)})
        return doc

    def request_cancel(self, job_id: Any) -> dict[str, Any] | None:
        """Ask for a job to be cancelled (the documented client update); the new document."""
        doc: dict[str, Any] | None = self.jobs.find_one_and_update(
            {"_id": as_job_id(job_id)},
            {"$set": {"cancel_requested": True}},
            return_document=ReturnDocument.AFTER,
        )
        return doc

    def counts(self) -> dict[str, int]:
        """Number of jobs per stored state value."""
        pipeline = [{"$group": {"_id": "$state", "n": {"$sum": 1}}}]
        return {str(row["_id"]): row["n"] for row in self.jobs.aggregate(pipeline)}

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
        extra_update: Mapping[str, Mapping[str, Any]] | None = None,
        record: bool = True,
    ) -> list[dict[str, Any]]:
        """Atomically move up to ``limit`` jobs from ``current`` to the leased state ``new`` for
        ``owner``; returns the claimed documents (possibly fewer, or none, when others won).
        ``record=False`` leaves the claim out of the job's history."""
        if new not in TRANSITIONS[current]:
            raise ValueError(f"{current.value!r} -> {new.value!r} is not a job transition")
        now = utcnow()
        token = uuid.uuid4().hex
        filt = {"state": current.value, **(extra_filter or {})}
        update: dict[str, Any] = {
            "$set": {
                "state": new.value,
                "updated_at": now,
                "lease": {
                    "owner": owner,
                    "token": token,
                    "until": now + timedelta(seconds=lease_seconds),
                },
            },
        }
        if record:
            update["$push"] = {
                "history": {"$each": [{"state": new.value, "at": now, "by": owner}],
                            "$slice": -HISTORY_LIMIT}
            }
        for op, values in (extra_update or {}).items():
            update.setdefault(op, {}).update(values)
        return self._claim(filt, update, token, limit)

    def claim_notifications(self, *, owner: str, limit: int, lease_seconds: float
                            ) -> list[dict[str, Any]]:
        """Claim ended jobs whose notification is due (and not leased by a live actor)."""
        now = utcnow()
        token = uuid.uuid4().hex
        filt = _notification_due(now)
        update = {
            "$set": {
                "notification.state": "sending",
                "lease": {"owner": owner, "token": token,
                          "until": now + timedelta(seconds=lease_seconds)},
            }
        }
        return self._claim(filt, update, token, limit)

    def _claim(self, filt: Mapping[str, Any], update: Mapping[str, Any], token: str, limit: int
               ) -> list[dict[str, Any]]:
        """Read candidates, take them with one ``update_many``, and return the ones taken.

        When the update took every candidate (the usual case), the documents already read are
        returned with the claim's ``$set`` applied (other operators, such as ``$inc`` and
        ``$push``, are not reflected); when others took some, ours are read back by token.
        """
        docs = list(self.jobs.find(filt, {"history": 0}).sort("_id", 1).limit(limit))
        if not docs:
            return []
        ids = [d["_id"] for d in docs]
        # The filter is repeated so that a job another actor took in between is left alone.
        taken = self.jobs.update_many({"_id": {"$in": ids}, **filt}, update).modified_count
        if taken != len(ids):
            return list(self.jobs.find({"_id": {"$in": ids}, "lease.token": token},
                                       {"history": 0}))
        for doc in docs:
            for key, value in update["$set"].items():
                _set_path(doc, key, value)
        return docs

    def renew_leases(self, job_ids: Sequence[Any], token: str, seconds: float) -> None:
        """Extend the leases of claimed jobs that this claim (``token``) still holds."""
        self.jobs.update_many({"_id": {"$in": list(job_ids)}, "lease.token": token},
                              {"$set": {"lease.until": utcnow() + timedelta(seconds=seconds)}})

    def apply(self, changes: Sequence[Transition | UpdateOne]) -> int:
        """Write a batch of compare-and-set changes; returns how many took effect. A change whose
        job is no longer in the expected state is skipped (someone else moved it on)."""
        if not changes:
            return 0
        now = utcnow()
        ops = [c.as_update(now) if isinstance(c, Transition) else c for c in changes]
        try:
            result = self.jobs.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            raise ExecdError(f"batch write failed: {exc.details.get('writeErrors')}") from exc
        return result.modified_count

    def release(self, jobs: Iterable[Mapping[str, Any]], back_to: JobState, *, by: str,
                message: str) -> int:
        """Give claimed jobs back (rollback at warm stop, or no capacity); lease-checked."""
        changes = []
        for doc in jobs:
            current = JobState(doc["state"])
            changes.append(transition(doc["_id"], current, back_to, by=by, message=message,
                                      lease_token=doc["lease"]["token"]))
        return self.apply(changes)

    # ------------------------------------------------------------------ recovery
    def expire_leases_of(self, owner_prefix: str) -> None:
        """End the leases of every actor whose owner id starts with ``owner_prefix`` (a dead
        actor or a dead daemon), so that recovery picks their jobs up at once."""
        past = utcnow() - timedelta(seconds=1)
        owned = {"lease.owner": {"$regex": f"^{_regex_escape(owner_prefix)}"}}
        # Filtered on the states that hold leases, so that the indexes serve the query.
        for held in ({"state": {"$in": [s.value for s in (JobState.BUILDING,
                                                            JobState.SUBMITTING)]}},
                     {"notification.state": "sending"}):
            self.jobs.update_many({**held, **owned}, {"$set": {"lease.until": past}})
        self.leases.update_many(
            {"owner": {"$regex": f"^{_regex_escape(owner_prefix)}"}},
            {"$set": {"until": past}},
        )

    def recover_expired(self, *, by: str) -> dict[str, int]:
        """Put jobs whose lease expired back where another actor can take them.

        ``building`` goes back to ``to be built`` (building is idempotent); ``submitting`` goes
        back to ``to be submitted`` marked for recovery, so that the next Submit actor first asks
        the execution system whether the job is already there before submitting it again.
        A notification whose lease expired is due again.
        """
        now = utcnow()
        expired = {"lease.until": {"$lt": now}}
        counts = {}
        for state, back, extra in (
            (JobState.BUILDING, JobState.TO_BE_BUILT, {}),
            (JobState.SUBMITTING, JobState.TO_BE_SUBMITTED, {"submission.recover": True}),
        ):
            entry = {"state": back.value, "at": now, "by": by,
                     "message": f"lease expired while {state.value}; recovered"}
            result = self.jobs.update_many(
                {"state": state.value, **expired},
                {
                    "$set": {"state": back.value, "updated_at": now, **extra},
                    "$unset": {"lease": ""},
                    "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}},
                },
            )
            counts[state.value] = result.modified_count
        result = self.jobs.update_many(
            {"notification.state": "sending", **expired},
            {"$set": {"notification.state": "due"}, "$unset": {"lease": ""}},
        )
        counts["notification"] = result.modified_count
        return counts

    def cancel_unsubmitted(self, *, by: str) -> int:
        """End as ``killed`` every job cancelled before it reached an execution system."""
        now = utcnow()
        entry = {"state": JobState.KILLED.value, "at": now, "by": by,
                 "message": "cancelled before submission"}
        ops = []
        for doc in self.jobs.find(
            {"cancel_requested": True,
             "state": {"$in": [JobState.TO_BE_BUILT.value, JobState.TO_BE_SUBMITTED.value]}},
            {"_id": 1, "state": 1, "notify": 1},
        ):
            ops.append(UpdateOne(
                {"_id": doc["_id"], "state": doc["state"]},
                {"$set": {"state": JobState.KILLED.value, "updated_at": now, "ended_at": now,
                          "status_message": "cancelled before submission",
                          **end_fields(doc.get("notify", True) is not False)},
                 "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}}},
            ))
        return self.apply(ops)

    def fail_unknown_states(self, *, by: str, limit: int = 1000) -> int:
        """End in ``error`` every job whose state is missing or not a known state."""
        known = [s.value for s in JobState]
        now = utcnow()
        ops = []
        for doc in self.jobs.find({"state": {"$nin": known}}, {"_id": 1, "state": 1}).limit(limit):
            # A covered index scan reports a missing field as null: treat both alike.
            value = doc.get("state")
            reason = ("state is missing (a new job must have state 'to be built')"
                      if value is None else
                      f"state {value!r} is not a job state (known: {', '.join(known)})")
            filt = {"_id": doc["_id"], "state": value}
            entry = {"state": JobState.ERROR.value, "at": now, "by": by, "message": reason}
            ops.append(UpdateOne(filt, {
                "$set": {"state": JobState.ERROR.value, "status_message": reason,
                         "updated_at": now, "ended_at": now, **end_fields(True)},
                "$push": {"history": {"$each": [entry], "$slice": -HISTORY_LIMIT}},
            }))
        return self.apply(ops)

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
        """Jobs handed to ``system`` (on ``host`` for host-bound systems) and not ended."""
        filt: dict[str, Any] = {
            "system": system,
            "state": {"$in": [s.value for s in ACTIVE_STATES]},
        }
        if host is not None:
            filt["host"] = host
        return list(self.jobs.find(filt, {"history": 0, "outputs": 0}))

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

    def unregister_daemon(self, instance: str) -> None:
        self.daemons.delete_one({"_id": instance})

    def daemons_on(self, host: str) -> list[dict[str, Any]]:
        return list(self.daemons.find({"host": host}))


def _notification_due(now: datetime) -> dict[str, Any]:
    """The filter of jobs whose notification is due at ``now`` (not waiting for a retry)."""
    return {
        "notification.state": "due",
        "$or": [{"notification.next_attempt": {"$exists": False}},
                {"notification.next_attempt": {"$lte": now}}],
    }


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """``doc[a][b] = value`` for ``"a.b"``, as ``$set`` does."""
    *parents, last = dotted.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


def _regex_escape(text: str) -> str:
    return re.escape(text)


def ping(store: JobStore) -> None:
    """Raise PyMongoError unless the server answers."""
    store.db.client.admin.command("ping")


__all__ = [
    "HISTORY_LIMIT",
    "JobStore",
    "PyMongoError",
    "Transition",
    "as_job_id",
    "connect",
    "end_fields",
    "predecessors",
    "transition",
    "utcnow",
]
