"""The Submit actor: ``to be submitted`` -> ``submitting`` -> an active state (or ``error``).

For each claimed job: ask the Dispatcher for a route (once: the choice is kept on the job), then
the route's execution system to run it, and store the native id straight away. Never twice:

* the claim marks a submission attempt on the job before ``run`` is called;
* a job whose Submit actor died in between comes back marked for recovery (see
  ``JobStore.recover_expired``), and the execution system is first asked whether it already has
  the job (``ExecutionSystem.find``, by the job's tag or job directory) before a new ``run``;
* so does a job whose submission ended in doubt: ``SystemUnavailable`` from ``run`` (a command
  that timed out may have been accepted, and the system's own look-up may have failed too).

A system with no free slot (``NoCapacity``) gets its jobs back in ``to be submitted`` with the
chosen system recorded, and is not offered more until a slot frees or the poll interval passes;
then it is offered one job, and a batch again once it takes one. A system that cannot be
reached (``SystemUnavailable``) likewise, with a growing delay. Claims read the jobs of the
systems with room only (an index range per system), so a full system's backlog costs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

from pymongo import UpdateOne

from execution_engine.actors.base import Actor, LeaseKeeper
from execution_engine.errors import (
    NoCapacity,
    RoutingError,
    SubmissionRejected,
    SystemUnavailable,
)
from execution_engine.jobdoc import spec_of
from execution_engine.logs import job_extra
from execution_engine.registry import create_systems, load_registry
from execution_engine.routing.dispatcher import Dispatcher
from execution_engine.routing.guard import RuleGuard, RuleTimeout
from execution_engine.states import JobState
from execution_engine.store import HISTORY_LIMIT, Transition, end_fields, transition, utcnow
from execution_engine.systems.base import ExecutionSystem, host_name

log = logging.getLogger(__name__)

FLUSH_EVERY = 50
"""Saved submissions are written in batches of this many (or at the end of the claimed batch):
a crash in between is covered by recovery through ``find``, so batching loses nothing."""


class SubmitActor(Actor):
    kind: ClassVar[str] = "submit"
    rule_guard: RuleGuard | None = None
    """Runs routing rules with a time limit (made at the first routing decision)."""

    def setup(self) -> None:
        registry = load_registry(self.config)
        self.systems: dict[str, ExecutionSystem] = create_systems(registry, self.config)
        self.dispatcher = Dispatcher.from_config(self.config, registry.rules)
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
        pending: list[Transition | UpdateOne] = []
        with LeaseKeeper(self.store, jobs, self.config.monitor.lease_seconds):
            for doc in jobs:
                if self.stopping or self._is_blocked(doc.get("system")):
                    pending.append(self._put_back(doc, doc.get("system"), None))
                    continue
                pending.append(self.submit_one(doc))
                if len(pending) >= FLUSH_EVERY:
                    self._flush(pending)
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
                        {"submission.retry_at": {"$lte": utcnow()}}],
            },
            extra_update={"$inc": {"submission.attempts": 1}},
            record=False,  # a job waiting for a slot is claimed again and again
        )

    def _flush(self, pending: list[Transition | UpdateOne]) -> None:
        if pending:
            self.store.apply(pending)
            self.hand_on(pending, "status")
            pending.clear()

    def _is_blocked(self, system: str | None) -> bool:
        return system is not None and self.blocked_until.get(system, 0.0) > time.monotonic()

    def submit_one(self, doc: Mapping[str, Any]  # noqa: PLR0911 - a return per outcome
                   ) -> Transition | UpdateOne:
        job_id = doc["_id"]
        token = doc["lease"]["token"]
        notify = doc.get("notify", True) is not False

        def fail(message: str) -> Transition:
            return transition(job_id, JobState.SUBMITTING, JobState.ERROR, by=self.owner,
                              message=message, lease_token=token, fields=end_fields(notify))

        if doc.get("cancel_requested") is True:
            return transition(job_id, JobState.SUBMITTING, JobState.KILLED, by=self.owner,
                              message="cancelled before submission", lease_token=token,
                              fields=end_fields(notify))
        try:
            route_name, system_name = self._route(doc)
        except RoutingError as exc:
            log.info("%s", exc.reason, extra=job_extra(job_id))
            return fail(exc.reason)
        if self._is_blocked(system_name):
            return self._put_back(doc, system_name, route_name)
        system = self.systems[system_name]
        spec = spec_of(doc)
        try:
            native_id = system.find(spec) if doc.get("submission", {}).get("recover") else None
            if native_id is not None:
                log.info("found already submitted as %s; not submitting again", native_id,
                         extra=job_extra(job_id))
                state = JobState.SUBMITTED
            else:
                submission = system.run(spec)
                native_id, state = submission.native_id, submission.state
        except NoCapacity:
            self.blocked_until[system_name] = time.monotonic() + self.config.monitor.poll_interval
            self.one_at_a_time.add(system_name)
            return self._put_back(doc, system_name, route_name)
        except SubmissionRejected as exc:
            log.info("rejected by %s: %s", system_name, exc.reason, extra=job_extra(job_id))
            return fail(f"rejected by execution system {system_name}: {exc.reason}")
        except SystemUnavailable as exc:
            delay = min(max(self.unavailable_backoff.get(system_name, 0.0) * 2, 1.0), 300.0)
            self.unavailable_backoff[system_name] = delay
            self.blocked_until[system_name] = time.monotonic() + delay
            self.one_at_a_time.add(system_name)
            log.warning("%s unavailable, retrying in %.0fs: %s", system_name, delay, exc.reason,
                        extra=job_extra(job_id))
            # The job may have reached the system all the same: look it up before a new run.
            return self._put_back(doc, system_name, route_name, retry_in=delay, recover=True)
        except Exception as exc:  # a system plugin's bug must not stop other jobs
            log.exception("execution system %s failed to submit", system_name,
                          extra=job_extra(job_id))
            return fail(f"execution system {system_name} failed to submit: {exc!r}")
        self.unavailable_backoff.pop(system_name, None)
        self.one_at_a_time.discard(system_name)
        now = utcnow()
        fields: dict[str, Any] = {"native_id": native_id, "system": system_name,
                                  "route": route_name, "submitted_at": now}
        if system.host_bound:
            fields["host"] = self.host
        if state is JobState.RUNNING:
            fields["started_at"] = now
        log.debug("submitted to %s as %s", system_name, native_id, extra=job_extra(job_id))
        return transition(job_id, JobState.SUBMITTING, state, by=self.owner, lease_token=token,
                          fields=fields, unset=("submission.recover", "submission.retry_at"))

    def _route(self, doc: Mapping[str, Any]) -> tuple[str, str]:
        """The (route, system) for the job: the one already chosen, else the Dispatcher's.

        Rules run under the :class:`RuleGuard`: a rule that raises, or that does not answer
        within ``[plugins] rule_timeout``, ends this job in ``error`` naming it (RoutingError)
        and the actor goes on with the next job. Each hung rule leaks a thread; after
        ``RESTART_AFTER_ABANDONED`` of them the actor stops warmly and the Monitor restarts it.
        """
        if doc.get("route") and doc.get("system") in self.systems:
            return doc["route"], doc["system"]
        if self.rule_guard is None:
            self.rule_guard = RuleGuard(self.config.plugins.rule_timeout)
        try:
            decision = self.rule_guard.decide(self.dispatcher, doc)
        except RuleTimeout as exc:
            log.error("%s", exc, extra=job_extra(doc["_id"]))
            self.restart_if_rules_hang(self.rule_guard.abandoned)
            raise RoutingError(doc["_id"], str(exc)) from exc
        failure = decision.failure
        if failure is not None:
            log.error("routing rule %s of route %s failed: %s", failure[1].rule,
                      failure[0].route, failure[1].error, extra=job_extra(doc["_id"]))
        outcome = decision.outcome(doc["_id"])
        if outcome.system not in self.systems:
            raise RoutingError(doc["_id"], f"route {outcome.route} names unknown execution "
                                           f"system {outcome.system}")
        return outcome.route, outcome.system

    def _put_back(self, doc: Mapping[str, Any], system: str | None, route: str | None,
                  retry_in: float | None = None, recover: bool = False) -> UpdateOne:
        """Return a claimed job to ``to be submitted`` without a history entry (a job waiting for
        a slot may come back many times; its history records real changes only). ``recover``:
        the next attempt first asks the system whether it already has the job."""
        sets: dict[str, Any] = {"state": JobState.TO_BE_SUBMITTED.value, "updated_at": utcnow()}
        if system is not None:
            sets["system"] = system
        if route is not None:
            sets["route"] = route
        if retry_in is not None:
            sets["submission.retry_at"] = utcnow() + timedelta(seconds=retry_in)
        if recover:
            sets["submission.recover"] = True
        return UpdateOne(
            {"_id": doc["_id"], "state": JobState.SUBMITTING.value,
             "lease.token": doc["lease"]["token"]},
            {"$set": sets, "$unset": {"lease": ""}, "$inc": {"submission.attempts": -1}},
        )


__all__ = ["HISTORY_LIMIT", "SubmitActor"]
