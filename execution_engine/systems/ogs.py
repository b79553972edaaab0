"""Grid Engine (Son of / Open / Univa Grid Engine) through its DRMAA library.

Submission, status, kill, hold and release go through the DRMAA base
(:class:`~execution_engine.systems.drmaa_base.DrmaaSystem`); this module adds Grid Engine's
native specification and the lookup of a job by its name.

* Requirements: ``-q <queue>``, ``-pe <parallel_environment> <cores>`` (more than one core),
  ``-l h_vmem=<memory per slot>M`` (Grid Engine limits memory per slot: the job's memory is
  divided among its cores) and ``-l h_rt=<seconds>``. The job name (``-N``) is DRMAA's
  ``jobName``.
* Grid Engine's DRMAA checks a job at submission (as ``qsub -w e`` would): an unknown queue,
  parallel environment or resource, or a request no queue can ever satisfy ("no suitable
  queues") is refused at once with Grid Engine's message (SubmissionRejected). A limit that no
  complex caps (``h_vmem`` on a queue where it is INFINITY) is accepted.
* Status: DRMAA ``jobStatus`` for every job in one pass; Grid Engine answers for jobs of any
  session, so a new process (a Status actor, a restarted daemon) tracks jobs submitted by
  another. Ended jobs disappear from other sessions at once: the exit-code file says how they
  ended.
* :meth:`OgsSystem.find`: ``qstat -u '*' -xml`` (one call, the job names in full), then the
  accounting (``qacct -j <tag>``) for a job that has already ended.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from execution_engine.errors import SystemUnavailable
from execution_engine.systems.base import JobSpec
from execution_engine.systems.batch import (
    CommandResult,
    check_name,
    forgotten_id,
    job_has_started,
    run_command,
)
from execution_engine.systems.drmaa_base import DrmaaSystem


def sge_resource_arguments(job: JobSpec, *, system: str, default_queue: str = "",
                           parallel_environment: str = "smp",
                           memory_resource: str = "h_vmem") -> list[str]:
    """Grid Engine native-specification arguments for the job's requirements."""
    res = job.resources
    args = []
    queue = res.queue or default_queue
    if queue:
        args += ["-q", check_name(system, "queue", queue)]
    cores = res.cores or 1
    if cores > 1:
        args += ["-pe", check_name(system, "parallel environment", parallel_environment),
                 str(cores)]
    limits = []
    if res.memory_mb:
        limits.append(f"{memory_resource}={math.ceil(res.memory_mb / cores)}M")
    if res.walltime_s:
        limits.append(f"h_rt={int(res.walltime_s)}")
    if limits:
        args += ["-l", ",".join(limits)]
    return args


def parse_qstat_xml(text: str) -> dict[str, str]:
    """``qstat -xml`` output -> job number -> job name (pending and running jobs)."""
    if not text.strip():
        return {}
    root = ET.fromstring(text)  # our own qstat's output, not untrusted input
    jobs = {}
    for entry in root.iter("job_list"):
        number = (entry.findtext("JB_job_number") or "").strip()
        if number:
            jobs[number] = (entry.findtext("JB_name") or "").strip()
    return jobs


def parse_qacct_numbers(text: str) -> list[str]:
    """The ``jobnumber`` values of ``qacct -j`` output."""
    numbers = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "jobnumber" and value.strip().isdigit():
            numbers.append(value.strip())
    return numbers


def newest(numbers: list[str]) -> str | None:
    return max(numbers, key=int) if numbers else None


class OgsSystem(DrmaaSystem):
    """Jobs submitted to a Grid Engine cell through DRMAA; see the module docstring."""

    kind: ClassVar[str] = "ogs"
    scheduler: ClassVar[str] = "Grid Engine"
    option_spec: ClassVar[Mapping[str, str]] = {
        **DrmaaSystem.option_spec,
        "sge_root": 'string(default="")',
        "sge_cell": 'string(default="")',
        "parallel_environment": 'string(default="smp")',
        "memory_resource": 'string(default="h_vmem")',
        "bin_dir": 'string(default="")',
        "command_timeout": "float(min=1, max=3600, default=60)",
    }
    """``sge_root``/``sge_cell``: the cell ("" = $SGE_ROOT/$SGE_CELL). ``parallel_environment``:
    the PE of multi-core jobs. ``memory_resource``: the per-slot memory limit to request
    (``h_vmem``, or a site's consumable such as ``mem_free``). ``bin_dir``: folder of ``qstat``
    and ``qacct`` ("" = PATH). ``command_timeout``: seconds for those commands."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.parallel_environment = str(self.options.get("parallel_environment") or "smp")
        self.memory_resource = str(self.options.get("memory_resource") or "h_vmem")
        self.bin_dir = str(self.options.get("bin_dir") or "")
        self.command_timeout = float(self.options.get("command_timeout") or 60)

    def resource_arguments(self, job: JobSpec) -> list[str]:
        return sge_resource_arguments(
            job, system=self.name, default_queue=self.queue,
            parallel_environment=self.parallel_environment,
            memory_resource=self.memory_resource)

    # ------------------------------------------------------------------ find
    def _command(self, name: str, *args: str) -> CommandResult:
        env = dict(os.environ)
        for key, variable in (("sge_root", "SGE_ROOT"), ("sge_cell", "SGE_CELL")):
            if self.options.get(key):
                env[variable] = str(self.options[key])
        path = str(Path(self.bin_dir) / name) if self.bin_dir else name
        return run_command([path, *args], system=self.name, timeout=self.command_timeout,
                           env=env)

    def find(self, job: JobSpec) -> str | None:
        """The job's number looked up by its name: among the cell's jobs (``qstat``), then in
        the accounting (``qacct``); a job that ran and is known to neither gets a "forgotten"
        id, so that it is never submitted twice. Raises SystemUnavailable."""
        result = self._command("qstat", "-u", "*", "-xml")
        if not result.ok:
            raise SystemUnavailable(self.name, result.describe())
        try:
            jobs = parse_qstat_xml(result.stdout)
        except ET.ParseError as exc:
            raise SystemUnavailable(self.name, f"unreadable qstat -xml output: {exc}") from exc
        native_id = newest([number for number, name in jobs.items() if name == job.tag])
        if native_id is None:
            accounting = self._command("qacct", "-j", job.tag)
            native_id = newest(parse_qacct_numbers(accounting.stdout)) if accounting.ok else None
        if native_id is None and job_has_started(job):
            native_id = forgotten_id(job)
        return native_id
