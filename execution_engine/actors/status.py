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
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from execution_engine.actors.base import Actor
from execution_engine.actors.notification import notification_channels
from execution_engine.apps.outputs import app_outputs, bounded_outputs, failed_phase_message
from execution_engine.errors import SystemUnavailable
from execution_engine.jobdoc import spec_of
from execution_engine.logs import job_extra
from execution_engine.registry import create_systems, load_registry
from execution_engine.states import JobState
from execution_engine.store import Transition, end_fields, transition, utcnow
from execution_engine.systems.base import ENGINE_DIR, ExecutionSystem, StatusReport, host_name

log = logging.getLogger(__name__)

DEFAULT_KILL_GRACE = 10.0


class StatusActor(Actor):
    kind: ClassVar[str] = "status"

    def setup(self) -> None:
        registry = load_registry(self.config)
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
        """Turn the pool's Event into a readable pipe, so one ``select`` waits for both the bell
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
        jobs = self.store.active_jobs(system.name, host)
        changes: list[Transition | UpdateOne] = self.kill_requested(system, jobs)
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

    def follow(self, system: ExecutionSystem, jobs: list[dict[str, Any]]
               ) -> list[Transition | UpdateOne]:
        specs = {str(doc["_id"]): spec_of(doc) for doc in jobs}
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
        changes: list[Transition | UpdateOne] = []
        for doc in jobs:
            report = reports.get(str(doc["_id"]))
            if report is not None and report.state is not None:
                change = self.apply_report(doc, report)
                if change is not None:
                    changes.append(change)
        return changes

    def apply_report(self, doc: Mapping[str, Any], report: StatusReport) -> Transition | None:
        current = JobState(doc["state"])
        new = report.state
        assert new is not None
        if not new.is_ended:
            if new is current:
                return None
            fields: dict[str, Any] = {}
            if new is JobState.RUNNING and not doc.get("started_at"):
                fields["started_at"] = utcnow()
            return transition(doc["_id"], current, new, by=self.owner, fields=fields)
        cancelled = doc.get("cancel_requested") is True
        if cancelled:
            final, message = JobState.KILLED, "killed on request"
        elif new is JobState.FINISHED:
            final, message = JobState.FINISHED, ""
        elif new is JobState.KILLED:
            final, message = JobState.ERROR, report.message or "killed by the execution system"
        else:
            final, message = JobState.ERROR, report.message
        job_dir = Path(doc["job_dir"])
        patterns = doc.get("output_patterns")  # set on application jobs (execution_engine.apps)
        if final is JobState.ERROR and patterns is not None:  # name the phase that failed
            message = failed_phase_message(job_dir, message)
        fields = {
            **end_fields(bool(notification_channels(doc, self.config.notification,
                                                    self.hook_count))),
            "exit_code": report.exit_code,
            "outputs": list_outputs(job_dir) if patterns is None else
            app_outputs(job_dir, patterns),
        }
        log.debug("ended %s (%s)", final.value, message, extra=job_extra(doc["_id"]))
        return transition(doc["_id"], current, final, by=self.owner, message=message,
                          fields=fields)

    def kill_requested(self, system: ExecutionSystem, jobs: list[dict[str, Any]]
                       ) -> list[Transition | UpdateOne]:
        """TERM each job whose cancellation was requested; KILL it after the grace period."""
        changes: list[Transition | UpdateOne] = []
        grace = float(getattr(system, "kill_grace", DEFAULT_KILL_GRACE))
        now = utcnow()
        for doc in jobs:
            if doc.get("cancel_requested") is not True:
                continue
            kill = doc.get("kill") or {}
            term_at = kill.get("term_at")
            if term_at is None:
                force, field = False, "kill.term_at"
            elif not kill.get("kill_at") and (now - term_at).total_seconds() >= grace:
                force, field = True, "kill.kill_at"
            else:
                continue
            try:
                system.kill(spec_of(doc), force=force)
            except SystemUnavailable as exc:
                log.warning("cannot kill now, will retry: %s", exc.reason,
                            extra=job_extra(doc["_id"]))
                continue
            except Exception:  # a system plugin's bug
                log.exception("execution system %s failed to kill", system.name,
                              extra=job_extra(doc["_id"]))
                continue
            log.info("sent %s", "KILL" if force else "TERM", extra=job_extra(doc["_id"]))
            changes.append(UpdateOne({"_id": doc["_id"], "state": doc["state"]},
                                     {"$set": {field: now}}))
        if changes:
            # Look again soon: the killed jobs end quickly, and KILL may be due after the grace.
            self.next_due[system.name] = min(self.next_due[system.name],
                                             time.monotonic() + min(grace, 0.2))
        return changes


def list_outputs(job_dir: Path) -> list[dict[str, Any]]:
    """The files of a job directory (not the engine's own), with their sizes."""
    return bounded_outputs(_job_files(str(job_dir)))


def _job_files(top: str) -> Iterator[dict[str, Any]]:
    # str paths, not Path objects: every ended job comes through here.
    for root, dirs, files in os.walk(top):
        if root == top and ENGINE_DIR in dirs:
            dirs.remove(ENGINE_DIR)
        for name in sorted(files):
            path = f"{root}/{name}"
            try:
                size = os.lstat(path).st_size
            except OSError:
                continue
            yield {"path": path[len(top) + 1:], "size": size}
