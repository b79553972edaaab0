"""Counted cluster systems: the real classes, plus one line per ``get_statuses`` call.

Loaded by the engine as a drop-in systems plugin (``[plugins] systems`` names this folder) in the
cluster benchmark (:mod:`benchmarks.clusters`). Each call of ``get_statuses`` appends one JSON
line to the file of the section's ``count_file`` option: when it ended (``at``), how many jobs it
covered, how long it took, and what it cost the scheduler (command-line invocations, or DRMAA
``jobStatus`` requests for Grid Engine: DRMAA 1.0 has no bulk status call).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from execution_engine import execution_system
from execution_engine.systems.base import ExecutionSystem, JobSpec, StatusReport
from execution_engine.systems.ogs import OgsSystem
from execution_engine.systems.slurm import SlurmSystem
from execution_engine.systems.torque import TorqueSystem

COUNT_OPTION = {"count_file": 'string(default="")'}


def record(system: ExecutionSystem, jobs: int, began: float, commands: int,
           requests: int) -> None:
    """Append one call's line to the system's ``count_file``."""
    line = {"at": time.time(), "jobs": jobs, "seconds": time.monotonic() - began,
            "commands": commands, "drmaa_requests": requests}
    with open(system.options["count_file"], "a") as out:
        out.write(json.dumps(line) + "\n")


@execution_system
class CountedOgs(OgsSystem):
    """Grid Engine, counting the DRMAA ``jobStatus`` requests of each status call."""

    kind = "counted_ogs"
    option_spec: ClassVar[dict[str, str]] = {**OgsSystem.option_spec, **COUNT_OPTION}

    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        specs = list(jobs)
        session, _ = self.session()
        requests = [0]
        # The session's own method, kept once: a wrapper left over by a failed call must not
        # be wrapped again.
        if not hasattr(session, "_bench_job_status"):
            session._bench_job_status = session.jobStatus
        real: Callable[[str], Any] = session._bench_job_status

        def job_status(job_id: str) -> Any:
            requests[0] += 1
            return real(job_id)

        session.jobStatus = job_status
        began = time.monotonic()
        try:
            return super().get_statuses(specs)
        finally:
            session.jobStatus = real
            record(self, len(specs), began, 0, requests[0])


@execution_system
class CountedSlurm(SlurmSystem):
    """Slurm, counting the ``squeue``/``sacct`` invocations of each status call."""

    kind = "counted_slurm"
    option_spec: ClassVar[dict[str, str]] = {**SlurmSystem.option_spec, **COUNT_OPTION}

    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        specs = list(jobs)
        before, began = self.status_commands, time.monotonic()
        try:
            return super().get_statuses(specs)
        finally:
            record(self, len(specs), began, self.status_commands - before, 0)


@execution_system
class CountedTorque(TorqueSystem):
    """Torque/PBS, counting the ``qstat`` invocations of each status call (none through its
    DRMAA backend, which has no command counter)."""

    kind = "counted_torque"
    option_spec: ClassVar[dict[str, str]] = {**TorqueSystem.option_spec, **COUNT_OPTION}

    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        specs = list(jobs)
        backend = self.backend
        before, began = getattr(backend, "status_commands", 0), time.monotonic()
        try:
            return super().get_statuses(specs)
        finally:
            after = getattr(backend, "status_commands", 0)
            record(self, len(specs), began, after - before, 0)
