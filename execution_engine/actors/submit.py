"""The Submit actor: ``to be submitted`` -> ``submitting`` -> an active state (or ``error``).

For each claimed job: ask the :class:`Router` for a route (once: the choice is kept on the job),
then the route's execution system to run it, and store the native id straight away. Never twice:

* the claim marks a submission attempt on the job before ``run`` is called;
* a job whose Submit actor died in between comes back marked for recovery (see
  ``JobStore.recover_expired``), and the execution system is first asked whether it already has
  the job (``ExecutionSystem.find``, by the job's tag or job directory) before a new ``run``;
* so does a job whose submission ended in doubt: ``SystemUnavailable`` from ``run`` (a command
  that timed out may have been accepted, and the system's own look-up may have failed too).
  A cancellation of such a job is decided here too, after asking the system: a job found there
  is recorded as submitted and killed by the Status actor; only a job the system does not have
  ends ``killed`` at once.

A system with no free slot (``NoCapacity``) gets its jobs back in ``to be submitted`` with the
chosen system recorded, and is not offered more until a slot frees or the poll interval passes;
then it is offered one job, and a batch again once it takes one. A system that cannot be
reached (``SystemUnavailable``) likewise, with a growing delay. Claims read the jobs of the
systems with room only (an index range per system), so a full system's backlog costs nothing.

Results are written in batches, at least every :data:`FLUSH_AFTER` seconds, so that a job is seen
``running`` (and a cancellation finds it) soon after its process starts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

from execution_engine.actors.base import Actor, LeaseKeeper
from execution_engine.errors import (
    NoAccount,
    NoCapacity,
    RoutingError,
    SubmissionRejected,
    SystemUnavailable,
)
from execution_engine.identity import Account
from execution_engine.job import Job
from execution_engine.logs import job_extra
from execution_engine.plugins import create_systems
from execution_engine.reasons import Reason
from execution_engine.routing.router import Router
from execution_engine.states import JobState
from execution_engine.systems.base import ExecutionSystem, host_name
from execution_engine.transitions import Change, Transition, end_fields, transition

log = logging.getLogger(__name__)

FLUSH_EVERY = 50
"""Saved submissions are written in batches of this many (or at the end of the claimed batch):
a crash in between is covered by recovery through ``find``, so batching loses nothing."""
FLUSH_AFTER = 0.25
"""Seconds after which saved submissions are written even when the batch is not full (and at
once when a system is about to wait for capacity: ``ExecutionSystem.before_waiting``), so that
a started job is known, and can be cancelled, within this time."""


class SubmitActor(Actor):
    kind: ClassVar[str] = "submit"

    claimed_at: datetime
    """When the batch in hand was claimed: its jobs' ``submitting`` entry in their history."""

    def setup(self) -> None:
        self.systems: dict[str, ExecutionSystem] = create_systems(self.registry(), self.config)
        self.router = Router(self.config, self.registry().rules)
        self.host = host_name()
        self.blocked_until: dict[str, float] = {}
        self.one_at_a_time: set[str] = set()
        """Systems offered one job per claim: their last answer was NoCapacity or
        SystemUnavailable, so a batch would only be put back."""
        self.unavailable_backoff: dict[str, float] = {}

    def teardown(self) -> None:
        for system in getattr(self, "systems", {}).values():
            system.close()

    def idle_timeout(self) -> float:
        waits = [until - time.monotonic() for until in self.blocked_until.values()]
        return max(0.01, min([self.config.monitor.poll_interval, *waits]))

    # ------------------------------------------------------------------ work
    def work_once(self) -> bool:
        now = time.monotonic()
        open_systems = [name for name in self.systems if self.blocked_until.get(name, 0.0) <= now]
        # Jobs not routed yet, or routed to a system with room; a system that was full last time
        # is offered one job, not a batch that would only be put back; then, only when there
        # are none of these, jobs routed to a system this configuration no longer has (they are
        # routed again).
        jobs = self._claim_waiting(
            {"$in": [*(n for n in open_systems if n not in self.one_at_a_time), None]})
        for name in self.one_at_a_time.intersection(open_systems):
            jobs += self._claim_waiting({"$eq": name}, limit=1)
        if not jobs:
            jobs = self._claim_waiting({"$nin": [*self.systems, None]})
        if not jobs:
            return False
        pending: list[Change] = []
        flushed_at = time.monotonic()
        for system in self.systems.values():  # what started must be known while a run waits
            system.before_waiting = functools.partial(self._flush, pending)
        self.claimed_at = self.now()
        with LeaseKeeper(self.store, jobs, self.config.monitor.lease_seconds):
            for doc in jobs:
                job = Job(doc)
                if self.stopping or self._is_blocked(job.system):
                    pending.append(self._put_back(job, job.system, None))
                    continue
                pending.append(self.isolated(self.submit_one, job))
                if len(pending) >= FLUSH_EVERY or time.monotonic() - flushed_at >= FLUSH_AFTER:
                    self._flush(pending)
                    flushed_at = time.monotonic()
            self._flush(pending)
        return True

    def _claim_waiting(self, system: Mapping[str, Any], limit: int | None = None
                       ) -> list[dict[str, Any]]:
        """Claim waiting jobs whose ``system`` field matches ``system`` (a query operator)."""
        return self.store.claim(
            JobState.TO_BE_SUBMITTED, JobState.SUBMITTING, owner=self.owner,
            limit=limit or self.config.actors.batch_size,
            lease_seconds=self.config.monitor.lease_seconds,
            extra_filter={
                "system": system,
                "$or": [{"submission.retry_at": {"$exists": False}},
                        {"submission.retry_at": {"$lte": self.now()}}],
            },
            inc={"submission.attempts": 1},
            record=False,  # a job waiting for a slot is claimed again and again
        )

    def _flush(self, pending: list[Change]) -> None:
        if pending:
            self.store.apply(pending)
            self.hand_on(pending, "status")
            pending.clear()

    def _is_blocked(self, system: str | None) -> bool:
        return system is not None and self.blocked_until.get(system, 0.0) > time.monotonic()

    def submit_one(self, job: Job) -> Transition:  # noqa: PLR0911, PLR0912 - one per outcome
        def fail(message: str, reason: Reason) -> Transition:
            return self._outcome(job, JobState.ERROR, message=message, reason=reason.value,
                                 fields=end_fields(job.notify))

        if job.cancel_requested and not job.submission_in_doubt:
            return self._cancelled(job)
        spec = job.spec(self.config.engine.jobs_dir)
        try:
            spec = dataclasses.replace(spec, account=self._account(job))
        except NoAccount as exc:
            return fail(exc.reason, Reason.NO_ACCOUNT)
        if "built_at" not in job.doc and not spec.script.exists():
            return fail(f"state {job.doc.get('state')!r}: the engine never built this job (a new "
                        "job must be inserted with state 'to be built')",
                        Reason.INVALID_DOCUMENT)
        try:
            route_name, system_name = self._route(job)
        except RoutingError as exc:
            log.info("%s", exc.reason, extra=job_extra(job.id))
            if job.cancel_requested:
                return self._cancelled(job)
            return fail(exc.reason, Reason.ROUTING_FAILED)
        if self._is_blocked(system_name):
            return self._put_back(job, system_name, route_name)
        system = self.systems[system_name]
        try:
            native_id = system.find(spec) if job.submission_in_doubt else None
            if native_id is not None:
                log.info("found already submitted as %s; not submitting again", native_id,
                         extra=job_extra(job.id))
                state = JobState.SUBMITTED
            elif job.cancel_requested:  # in doubt, cancelled, and the system has no such job
                return self._cancelled(job)
            else:
                submission = system.run(spec)
                native_id, state = submission.native_id, submission.state
        except NoCapacity:
            self.blocked_until[system_name] = time.monotonic() + self.config.monitor.poll_interval
            self.one_at_a_time.add(system_name)
            return self._put_back(job, system_name, route_name)
        except SubmissionRejected as exc:
            log.info("rejected by %s: %s", system_name, exc.reason, extra=job_extra(job.id))
            return fail(f"rejected by execution system {system_name}: {exc.reason}",
                        Reason.REJECTED)
        except SystemUnavailable as exc:
            delay = min(max(self.unavailable_backoff.get(system_name, 0.0) * 2, 1.0), 300.0)
            self.unavailable_backoff[system_name] = delay
            self.blocked_until[system_name] = time.monotonic() + delay
            self.one_at_a_time.add(system_name)
            log.warning("%s unavailable, retrying in %.0fs: %s", system_name, delay, exc.reason,
                        extra=job_extra(job.id))
            # The job may have reached the system all the same: look it up before a new run.
            return self._put_back(job, system_name, route_name, retry_in=delay, recover=True)
        except Exception as exc:  # a system plugin's bug must not stop other jobs
            log.exception("execution system %s failed to submit", system_name,
                          extra=job_extra(job.id))
            return fail(f"execution system {system_name} failed to submit: {exc!r}",
                        Reason.INTERNAL_ERROR)
        self.unavailable_backoff.pop(system_name, None)
        self.one_at_a_time.discard(system_name)
        log.debug("submitted to %s as %s", system_name, native_id, extra=job_extra(job.id))
        return self._submitted(job, system, route_name, native_id, state)

    def _account(self, job: Job) -> Account | None:
        """The account the job runs as: its owner's now, which must be the one its directory
        was built for (a reload may have changed the mapping since, or turned it off: the job
        would not reach its own files, or would run as the daemon). Raises NoAccount."""
        account = self.account_of(job)
        built_for = job.doc.get("account")
        was = (f"account {built_for.get('name')}" if isinstance(built_for, Mapping)
               else "the daemon's own account")
        if account is None:
            if isinstance(built_for, Mapping):
                raise NoAccount(job.id, f"the job was built to run as {was}, but [identity] "
                                        "mapping is now off")
            return None
        if not isinstance(built_for, Mapping) or built_for.get("uid") != account.uid:
            raise NoAccount(job.id, f"owner {job.owner!r} now maps to account {account.name}, "
                                    f"but its job directory was built for {was}")
        return account

    def _submitted(self, job: Job, system: ExecutionSystem, route: str, native_id: str,
                   state: JobState) -> Transition:
        """The job is on ``system`` as ``native_id``: record it (and its host, for a system
        whose jobs only this host can see)."""
        now = self.now()
        fields: dict[str, Any] = {"native_id": native_id, "system": system.name,
                                  "route": route, "submitted_at": now,
                                  "status_message": _SUBMITTED_MESSAGE.get(state, "")}
        if system.host_bound:
            fields["host"] = self.host
        if state is JobState.RUNNING:
            fields["started_at"] = now
        return self._outcome(job, state, fields=fields,
                             unset=("submission.recover", "submission.retry_at"))

    def _cancelled(self, job: Job) -> Transition:
        return self._outcome(job, JobState.KILLED, message="cancelled before submission",
                             reason=Reason.CANCELLED.value, fields=end_fields(job.notify))

    def _outcome(self, job: Job, new: JobState, **details: Any) -> Transition:
        """The end of a job's submission step, recorded in its history after the
        ``submitting`` it went through (claims are not recorded: see ``_claim_waiting``)."""
        return transition(job.id, JobState.SUBMITTING, new, by=self.owner,
                          lease_token=job.lease_token,
                          since=(JobState.SUBMITTING, self.claimed_at), **details)

    def _route(self, job: Job) -> tuple[str, str]:
        """The (route, system) for the job: the one already chosen, else the Router's.

        Each hung rule leaks a thread; after ``RESTART_AFTER_ABANDONED`` of them the actor
        stops warmly and the Monitor restarts it.
        """
        if job.route and job.system in self.systems:
            return job.route, job.system
        try:
            return self.router.route(job.doc, self.systems)
        finally:
            self.restart_if_rules_hang(self.router.abandoned_rule_threads)

    def _put_back(self, job: Job, system: str | None, route: str | None,
                  retry_in: float | None = None, recover: bool = False) -> Transition:
        """Return a claimed job to ``to be submitted`` without a history entry (a job waiting for
        a slot may come back many times; its history records real changes only). ``recover``:
        the next attempt first asks the system whether it already has the job."""
        fields: dict[str, Any] = {}
        if system is not None:
            fields["system"] = system
            fields["status_message"] = f"waiting for a free slot of execution system {system}"
        if route is not None:
            fields["route"] = route
        if retry_in is not None:
            fields["submission.retry_at"] = self.now() + timedelta(seconds=retry_in)
            fields["status_message"] = (f"execution system {system} cannot be reached; "
                                        f"trying again in {retry_in:.0f}s")
        if recover:
            fields["submission.recover"] = True
        return transition(job.id, JobState.SUBMITTING, JobState.TO_BE_SUBMITTED, by=self.owner,
                          lease_token=job.lease_token, fields=fields, record=False,
                          inc={"submission.attempts": -1})


_SUBMITTED_MESSAGE = {
    JobState.SUBMITTED: "submitted; waiting for the execution system's first report",
    JobState.PENDING: "queued by the execution system",
}

__all__ = ["SubmitActor"]
