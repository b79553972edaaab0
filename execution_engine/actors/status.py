"""The Status actor: follows submitted jobs to their end, and carries out kills.

Each execution system is watched by one Status actor at a time, across every daemon sharing the
database (a named lease ``status:<system>``, or ``status:<system>@<host>`` for host-bound systems
such as Local whose jobs only their host can see). Per cycle, the actor reads the system's active
jobs from MongoDB and asks the system about all of them in ONE batched call.

* The end of a job is decided from the job's exit-code file (the system's ``ended_report``):
  ``finished`` for 0, ``error`` otherwise, ``killed`` when cancellation was requested.
* "Unknown for now" (scheduler down, job not visible yet) leaves the job alone; a system that
  cannot be asked is retried with a growing delay. Jobs are never failed for an outage.
* A job with ``cancel_requested`` gets ``kill`` (TERM), then ``kill(force=True)`` after the
  system's ``kill_grace`` seconds if it is still there.
* A job with ``hold_requested: true`` is held on its system (``hold``), and released
  (``release``) once the client sets it to ``false``; a system that cannot hold says so in the
  job's ``hold.error``.
* The engine's own record (``engine_state``) says which jobs are followed: a client's rewrite of
  ``state`` neither hides a job from its Status actor nor ends it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from typing import Any, ClassVar

from pymongo.errors import PyMongoError

from execution_engine.actors.base import Actor
from execution_engine.actors.notification import notification_channels
from execution_engine.apps.outputs import app_outputs, failed_phase_message, job_outputs
from execution_engine.errors import SystemUnavailable
from execution_engine.job import Job
from execution_engine.logs import job_extra
from execution_engine.plugins import create_systems
from execution_engine.reasons import Reason, exit_reason
from execution_engine.resubmission import Policy, attempt_record, next_attempt
from execution_engine.states import JobState
from execution_engine.systems.base import ExecutionSystem, StatusReport, host_name
from execution_engine.transitions import (
    Change,
    Mark,
    Transition,
    end_fields,
    new_attempt,
    transition,
)

log = logging.getLogger(__name__)

DEFAULT_KILL_GRACE = 10.0


class StatusActor(Actor):
    kind: ClassVar[str] = "status"

    def setup(self) -> None:
        registry = self.registry()
        self.systems: dict[str, ExecutionSystem] = create_systems(registry, self.config)
        self.hook_count = len(registry.manager.hook.execd_job_ended.get_hookimpls())
        self.host = host_name()
        self.next_due = dict.fromkeys(self.systems, 0.0)
        self.backoff: dict[str, float] = {}
        self.lease_renew_at: dict[str, float] = {}
        self._woken = True
        self._ready: set[int] = set()
        self._bell_r, self._bell_w = os.pipe()
        os.set_blocking(self._bell_w, False)
        threading.Thread(target=self._forward_bell, name="bell", daemon=True).start()

    def teardown(self) -> None:
        for system in getattr(self, "systems", {}).values():
            system.close()
        with contextlib.suppress(PyMongoError):  # else the lease expires by itself
            self.store.drop_leases(self.owner)

    def _forward_bell(self) -> None:
        """Turn the pool's bell into a readable pipe, so one ``select`` waits for both the bell
        and the systems' own wake-ups (Local job exits)."""
        while True:
            if self.bell.wait(1.0):
                with contextlib.suppress(BlockingIOError):  # full pipe: a wake-up is pending
                    os.write(self._bell_w, b"!")

    # ------------------------------------------------------------------ loop
    def work_once(self) -> bool:
        """Cycle every system that is due, woken by the bell, or whose own wake-up fired."""
        now = time.monotonic()
        for name, system in self.systems.items():
            due = now >= self.next_due[name]
            fd = system.wake_fileno()
            if due or self._woken or (fd is not None and fd in self._ready):
                self._cycle_safely(system, ask_system=due or system.host_bound)
        self._woken = False
        self._ready = set()
        return False  # always wait in idle(): it returns at once when there is more to do

    def idle(self) -> None:
        fds = [self._bell_r] + [fd for s in self.systems.values()
                                if (fd := s.wake_fileno()) is not None]
        timeout = max(0.0, min(self.next_due.values()) - time.monotonic())
        ready, _, _ = select.select(fds, [], [], min(timeout, self.config.monitor.poll_interval))
        self._ready = set(ready)
        if self._bell_r in self._ready:
            os.read(self._bell_r, 4096)
            self._woken = True

    def _cycle_safely(self, system: ExecutionSystem, *, ask_system: bool) -> None:
        try:
            self.cycle(system, ask_system=ask_system)
        except PyMongoError as exc:
            log.warning("MongoDB error during the status cycle of %s: %s", system.name, exc)
            time.sleep(0.5)

    # ------------------------------------------------------------------ one cycle
    def cycle(self, system: ExecutionSystem, *, ask_system: bool) -> None:
        """Kills, then (when ``ask_system``) one status call for all of the system's jobs."""
        host = self.host if system.host_bound else None
        if not self.hold_lease(system, host):
            self.next_due[system.name] = time.monotonic() + system.status_interval
            return
        jobs = [Job(doc) for doc in self.store.active_jobs(system.name, host)]
        changes: list[Change] = [*self.kill_requested(system, jobs),
                                 *self.hold_requested(system, jobs)]
        if ask_system:
            self.next_due[system.name] = time.monotonic() + system.status_interval
            if jobs:
                changes.extend(self.follow(system, jobs))
        if changes:
            self.store.apply(changes)
            self.hand_on(changes, "submit")

    def hold_lease(self, system: ExecutionSystem, host: str | None) -> bool:
        """Take or renew this actor's lease on watching ``system``. Renewed only once half of it
        has run out: cycles may come many times a second, a journaled write is not free."""
        now = time.monotonic()
        lease_for = max(self.config.monitor.lease_seconds, 3 * system.status_interval)
        if now < self.lease_renew_at.get(system.name, 0.0):
            return True
        name = f"status:{system.name}" + (f"@{host}" if host else "")
        if self.store.take_lease(name, self.owner, lease_for):
            self.lease_renew_at[system.name] = now + lease_for / 2
            return True
        self.lease_renew_at.pop(system.name, None)
        return False

    def follow(self, system: ExecutionSystem, jobs: list[Job]) -> list[Change]:
        root = self.config.engine.jobs_dir
        specs = {job.id_text: job.spec(root) for job in jobs}
        try:
            reports = system.get_statuses(specs.values())
        except SystemUnavailable as exc:
            delay = min(max(self.backoff.get(system.name, 0.0) * 2, system.status_interval), 300)
            self.backoff[system.name] = delay
            self.next_due[system.name] = time.monotonic() + delay
            log.warning("cannot ask %s for the status of %d jobs, retrying in %.0fs: %s",
                        system.name, len(jobs), delay, exc.reason)
            return []
        except Exception:  # a system plugin's bug: leave the jobs alone, try again later
            log.exception("execution system %s failed to report status", system.name)
            return []
        if self.backoff.pop(system.name, None) is not None:
            log.info("execution system %s answers again", system.name)
        changes: list[Change] = []
        for job in jobs:
            report = reports.get(job.id_text)
            if report is None or report.state is None:
                continue
            try:
                change = self.apply_report(job, report)
            except Exception as exc:  # this job's oddity (its directory, say) stops no other
                log.exception("cannot record the status of this job", extra=job_extra(job.id))
                change = self._failed(job, exc)
            if change is not None:
                changes.append(change)
        return changes

    def _failed(self, job: Job, exc: Exception) -> Transition | None:
        current = job.engine_state
        if current is None:
            return None
        return transition(job.id, current, JobState.ERROR, by=self.owner,
                          reason=Reason.INTERNAL_ERROR.value, fields=end_fields(job.notify),
                          message=f"internal error while recording its end: {exc!r}"[:1000])

    def apply_report(self, job: Job, report: StatusReport) -> Transition | None:
        current, new = job.engine_state, report.state
        if current is None or new is None:
            return None
        if not new.is_ended:
            if new is current:
                return None
            fields: dict[str, Any] = {}
            if new is JobState.RUNNING and job.started_at is None:
                fields["started_at"] = self.now()
            return transition(job.id, current, new, by=self.owner, fields=fields,
                              message=report.message or "")
        final, message, reason = self.outcome(job, report)
        job_dir = job.job_dir(self.config.engine.jobs_dir)
        patterns = job.output_patterns  # set on application jobs (execution_engine.apps)
        if final is JobState.ERROR and patterns is not None:  # name the phase that failed
            message = failed_phase_message(job_dir, message)
        if final is JobState.ERROR:
            again = self.resubmission(job, current, reason, message, report)
            if again is not None:
                return again
        notify = bool(notification_channels(job.doc, self.config.notification, self.hook_count))
        fields = {
            **end_fields(notify),
            "exit_code": report.exit_code,
            "outputs": job_outputs(job_dir) if patterns is None else
            app_outputs(job_dir, patterns),
        }
        if report.usage is not None:
            fields["usage"] = report.usage.as_document()
        log.debug("ended %s (%s)", final.value, message, extra=job_extra(job.id))
        return transition(job.id, current, final, by=self.owner, message=message,
                          reason=reason, fields=fields)

    def resubmission(self, job: Job, current: JobState, reason: str, message: str,
                     report: StatusReport) -> Transition | None:
        """The next attempt of a job whose attempt failed, when the policy of its route (with
        the job's own overrides) resubmits on ``reason`` and attempts are left; else None."""
        route = self.config.route(job.route or "")
        policy = (route.resubmit if route is not None else Policy()).overridden_by(
            job.resubmit_policy)
        if not policy.resubmits(reason, job.attempt):
            return None
        now = self.now()
        ended = attempt_record(
            job.doc, attempt=job.attempt, state=JobState.ERROR.value, reason=reason,
            message=message, exit_code=report.exit_code, ended_at=now,
            usage=report.usage.as_document() if report.usage is not None else None,
            job_dir=str(job.job_dir(self.config.engine.jobs_dir)))
        fields, told = next_attempt(job.doc, policy, ended, now=now)
        log.info("%s", told, extra=job_extra(job.id))
        return new_attempt(job.id, current, by=self.owner, message=told, fields=fields)

    @staticmethod
    def outcome(job: Job, report: StatusReport) -> tuple[JobState, str, str]:
        """The end state, message and reason of a job its system reports ended."""
        said = report.reason
        if job.cancel_requested:
            return JobState.KILLED, "killed on request", Reason.CANCELLED.value
        if report.state is JobState.FINISHED:
            return JobState.FINISHED, "", Reason.COMPLETED.value
        if report.state is JobState.KILLED:
            return (JobState.ERROR, report.message or "killed by the execution system",
                    said or Reason.KILLED_BY_SYSTEM.value)
        return JobState.ERROR, report.message, said or exit_reason(report.exit_code)

    def kill_requested(self, system: ExecutionSystem, jobs: list[Job]) -> list[Change]:
        """TERM each job whose cancellation was requested; KILL it after the grace period."""
        changes: list[Change] = []
        grace = float(getattr(system, "kill_grace", DEFAULT_KILL_GRACE))
        now = self.now()
        root = self.config.engine.jobs_dir
        for job in jobs:
            if not job.cancel_requested or job.engine_state is None:
                continue
            term_at = job.kill_term_at
            if term_at is None:
                force, field = False, "kill.term_at"
            elif not job.kill_sent and (now - term_at).total_seconds() >= grace:
                force, field = True, "kill.kill_at"
            else:
                continue
            if self._ask(system, "kill", job, lambda j=job, f=force: system.kill(j.spec(root),
                                                                               force=f)):
                log.info("sent %s", "KILL" if force else "TERM", extra=job_extra(job.id))
                changes.append(Mark(job.id, job.engine_state, {field: now}))
        if changes:
            # Look again soon: the killed jobs end quickly, and KILL may be due after the grace.
            self.next_due[system.name] = min(self.next_due[system.name],
                                             time.monotonic() + min(grace, 0.2))
        return changes

    def hold_requested(self, system: ExecutionSystem, jobs: list[Job]) -> list[Change]:
        """Hold the jobs whose client asked for it, and release those it no longer wants held."""
        changes: list[Change] = []
        root = self.config.engine.jobs_dir
        for job in jobs:
            state = job.engine_state
            if state is None or job.cancel_requested or job.hold_requested == job.hold_sent:
                continue
            if "hold_requested" not in job.doc and not job.hold_sent:
                continue
            hold = job.hold_requested
            action = system.hold if hold else system.release
            try:
                done = self._ask(system, "hold" if hold else "release", job,
                                 lambda j=job, a=action: a(j.spec(root)))
            except NotImplementedError as exc:
                changes.append(Mark(job.id, state, {"hold": {"held": job.hold_sent,
                                                             "error": str(exc)}}))
                continue
            if done:
                log.info("%s on request", "held" if hold else "released",
                         extra=job_extra(job.id))
                changes.append(Mark(job.id, state, {"hold": {"held": hold,
                                                             "at": self.now()}}))
        return changes

    @staticmethod
    def _ask(system: ExecutionSystem, what: str, job: Job, call: Any) -> bool:
        """Run ``call`` (a kill, hold or release of ``job``); False when it must be tried again
        later. NotImplementedError goes to the caller."""
        try:
            call()
        except SystemUnavailable as exc:
            log.warning("cannot %s now, will retry: %s", what, exc.reason,
                        extra=job_extra(job.id))
            return False
        except NotImplementedError:
            raise
        except Exception:  # a system plugin's bug
            log.exception("execution system %s failed to %s", system.name, what,
                          extra=job_extra(job.id))
            return False
        return True
