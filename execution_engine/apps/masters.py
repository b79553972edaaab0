"""Following split masters: their state comes from their subjobs, their kill goes to them.

A split master is never submitted: once built it is ``submitted`` with ``system: "split"``
(which no execution system is, so no Status actor looks at it) and this follower, run by the
Monitor, keeps it up to date:

* ``submitted`` while no subjob has started; ``running`` once one runs or has ended;
* when every subjob has ended: ``finished`` if all finished, ``killed`` if the master's
  cancellation was requested, else ``error`` naming the failed subjobs; the master's outputs are
  then its subjobs' outputs (``subjobs/<index>/<path>``, checksums included);
* ``subjobs`` on the master holds ``{total, counts: {state: n}}`` and ``status_message`` says
  the same in words, so that ``execd show`` and portals see the progress;
* a cancellation of the master is passed on to every subjob not yet ended.

A pass runs when the Monitor saw job changes (at most every ``min_gap`` seconds) and at least
every ``sweep`` seconds; with several daemons, one at a time does it (a named lease). Every write
is a compare-and-set on the master's state, so a pass racing another changes nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from pymongo.errors import PyMongoError

from execution_engine.apps.outputs import bounded_outputs
from execution_engine.apps.split import SPLIT_SYSTEM, SUBJOBS_DIR, subjob_id
from execution_engine.job import Job
from execution_engine.logs import job_extra
from execution_engine.reasons import Reason
from execution_engine.states import ENDED_STATES, JobState
from execution_engine.store import JobStore, utcnow
from execution_engine.transitions import Change, Mark, Transition, end_fields, transition

log = logging.getLogger(__name__)

LEASE = "split-masters"
_FAILED_NAMED = 20  # failed subjobs named in a master's message at most
_STARTED = {JobState.RUNNING, *ENDED_STATES}


def describe_counts(total: int, counts: Mapping[str, int]) -> str:
    """``50 subjobs: 12 running, 30 to be built, 8 finished`` (states in life order)."""
    parts = [f"{counts[s.value]} {s.value}" for s in JobState if counts.get(s.value)]
    return f"{total} subjobs: " + ", ".join(parts)


class SplitFollower:
    """Keeps split masters in step with their subjobs (see the module docstring)."""

    def __init__(self, owner: str, *, min_gap: float = 0.2, sweep: float = 2.0) -> None:
        self.owner = owner
        self.min_gap = min_gap
        self.sweep = sweep
        self.due = True
        self._last = 0.0

    def note(self) -> None:
        """Jobs changed: a pass is due."""
        self.due = True

    def tick(self, store: JobStore) -> None:
        """Run a pass if one is due (or the sweep interval passed); never raises but for
        MongoDB errors, which the caller retries."""
        now = time.monotonic()
        since = now - self._last
        if since < self.min_gap or (not self.due and since < self.sweep):
            return
        self.due = False
        self._last = now
        try:
            self.follow(store)
        except PyMongoError:
            self.due = True
            raise
        except Exception:  # never let a master's oddity stop the Monitor
            log.exception("following split masters failed")

    def follow(self, store: JobStore) -> int:
        """One pass over every active master; the number of masters changed."""
        masters = store.active_split_masters(SPLIT_SYSTEM)
        if not masters or not store.take_lease(LEASE, self.owner, 30.0):
            return 0
        ids = {m["_id"]: subjob_ids(m) for m in masters}
        self._pass_on_cancellations(store, masters, ids)
        counts = store.subjob_state_counts(ids)
        changes: list[Change] = []
        for master in masters:
            change = self._follow_one(store, master, counts[master["_id"]], ids[master["_id"]])
            if change is not None:
                changes.append(change)
        return store.apply(changes) if changes else 0

    def _pass_on_cancellations(self, store: JobStore, masters: list[dict[str, Any]],
                               ids: Mapping[Any, list[Any]]) -> None:
        changes: list[Change] = []
        for master in masters:
            job = Job(master)
            if not job.cancel_requested or job.kill_term_at is not None \
                    or job.engine_state is None:
                continue
            passed = store.cancel_subjobs(job.id, ids[job.id])
            changes.append(Mark(job.id, job.engine_state, {"kill.term_at": utcnow()}))
            log.info("cancellation passed on to %d subjobs", passed, extra=job_extra(job.id))
        if changes:
            store.apply(changes)
            store.cancel_unsubmitted(by=self.owner)

    def _follow_one(self, store: JobStore, master: Mapping[str, Any], counts: dict[str, int],
                    ids: list[Any]) -> Change | None:
        current = Job(master).engine_state
        if current is None:
            return None
        total = int((master.get("subjobs") or {}).get("total") or sum(counts.values()))
        summary = {"total": total, "counts": counts}
        ended = sum(counts.get(s.value, 0) for s in ENDED_STATES)
        if total and ended >= total:
            return self._end(store, master, current, summary, ids)
        started = any(counts.get(s.value) for s in _STARTED)
        text = describe_counts(total, counts)
        if started and current is not JobState.RUNNING:
            return transition(master["_id"], current, JobState.RUNNING, by=self.owner,
                              message=text, fields={"subjobs": summary, "started_at": utcnow()})
        if master.get("subjobs") == summary:
            return None
        return Mark(master["_id"], current, {"subjobs": summary, "status_message": text})

    def _end(self, store: JobStore, master: Mapping[str, Any], current: JobState,
             summary: dict[str, Any], ids: list[Any]) -> Transition:
        total = summary["total"]
        failed = store.failed_subjobs(master["_id"], ids)
        exit_code: int | None = 0
        reason = Reason.COMPLETED
        if master.get("cancel_requested") is True:
            final, message, reason = JobState.KILLED, "killed on request", Reason.CANCELLED
        elif not failed:
            final, message = JobState.FINISHED, f"all {total} subjobs finished"
        else:
            final, reason = JobState.ERROR, Reason.NONZERO_EXIT
            named = [f"#{d.get('index')} {d['_id']} ({d.get('status_message') or d['state']})"
                     for d in failed[:_FAILED_NAMED]]
            more = f"; and {len(failed) - _FAILED_NAMED} more" if len(failed) > _FAILED_NAMED \
                else ""
            message = f"{len(failed)} of {total} subjobs failed: " + "; ".join(named) + more
            exit_code = failed[0].get("exit_code")
        log.debug("split master ended %s (%s)", final.value, message,
                  extra=job_extra(master["_id"]))
        return transition(master["_id"], current, final, by=self.owner, message=message,
                          reason=reason.value, fields={
                              **end_fields(Job(master).notify),
                              "exit_code": exit_code,
                              "subjobs": summary,
                              "outputs": subjob_outputs(store, master["_id"], ids),
                          })


def subjob_ids(master: Mapping[str, Any]) -> list[Any]:
    """The ids the engine gave a master's subjobs (``<master id>.<index>``)."""
    summary = master.get("subjobs")
    total = summary.get("total") if isinstance(summary, Mapping) else None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        return []
    return [subjob_id(master["_id"], index) for index in range(total)]


def subjob_outputs(store: JobStore, master_id: Any, ids: list[Any]) -> list[dict[str, Any]]:
    """The outputs of a master's subjobs, as paths of the master's directory."""
    return bounded_outputs(
        {**output, "path": f"{SUBJOBS_DIR}/{doc['index']}/{output['path']}"}
        for doc in store.subjob_outputs(master_id, ids)
        for output in doc.get("outputs") or []
        if isinstance(output, Mapping) and not output.get("truncated"))
