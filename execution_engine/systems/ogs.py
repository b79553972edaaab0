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
* Why a job ended, and what it used: Grid Engine's accounting file (option
  ``accounting_file``, by default ``$SGE_ROOT/$SGE_CELL/common/accounting``, what ``qacct``
  reads), read **once per status cycle** for all the jobs that ended in it, backwards from its
  end (:func:`~execution_engine.systems.accounting.read_accounting_tail`): ``failed`` 37
  ("qmaster enforced h_rt, h_cpu, or h_vmem limit") or 100 with a signal (``qdel``) is a kill by
  the system; ``ru_wallclock`` at the requested walltime makes it walltime_exceeded,
  ``maxvmem`` at the requested ``h_vmem`` memory_exceeded, neither (or both)
  killed_by_system. Usage: ``ru_wallclock``, ``cpu``, ``ru_maxrss``, ``hostname``. DRMAA's
  ``JobInfo`` serves when the session that submitted the job sees it end (no ``failed`` code
  nor host there). Grid Engine writes accounting records every ``accounting_flush_time``
  (``flush_time``, 15 s by default): the end of a job that needs its record (no exit code, or
  one saying a signal ended it, and no kill of the engine's) waits for it up to
  ``accounting_wait`` seconds, then is reported without it (cause unknown).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from execution_engine.errors import SubmissionRejected, SystemUnavailable
from execution_engine.systems import records
from execution_engine.systems.accounting import (
    AWAITED,
    ENFORCED_MEMORY_RESOURCES,
    Evidence,
    JobEndRecord,
    job_end_evidence,
    read_accounting_tail,
)
from execution_engine.systems.base import JobSpec, Submission, read_exit_code
from execution_engine.systems.batch import (
    CommandResult,
    as_account,
    check_name,
    forgotten_id,
    job_has_started,
    looks_transient,
    run_command,
)
from execution_engine.systems.drmaa_base import DrmaaSystem, EndedJob

log = logging.getLogger(__name__)

#: Seconds before a job's submission from which its accounting record is looked for (clocks of
#: the hosts may differ a little).
_CLOCK_SLACK = 300.0


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
        "accounting_file": 'string(default="")',
        "accounting_wait": "float(min=0, max=3600, default=30)",
    }
    """``sge_root``/``sge_cell``: the cell ("" = $SGE_ROOT/$SGE_CELL). ``parallel_environment``:
    the PE of multi-core jobs. ``memory_resource``: the per-slot memory limit to request
    (``h_vmem``, or a site's consumable such as ``mem_free``). ``bin_dir``: folder of ``qstat``
    and ``qacct`` ("" = PATH). ``command_timeout``: seconds for those commands.
    ``accounting_file``: Grid Engine's accounting file ("" = ``<sge_root>/<sge_cell>/common/
    accounting``; ``none``: no evidence of how jobs ended). ``accounting_wait``: seconds the end
    of a job that needs its accounting record waits for Grid Engine to write it."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.parallel_environment = str(self.options.get("parallel_environment") or "smp")
        self.memory_resource = str(self.options.get("memory_resource") or "h_vmem")
        self.bin_dir = str(self.options.get("bin_dir") or "")
        self.command_timeout = float(self.options.get("command_timeout") or 60)
        self.accounting_file = self._accounting_path()
        wait = self.options.get("accounting_wait")
        self.accounting_wait = 30.0 if wait is None else float(wait)
        #: Reads of the accounting file (at most one per status call).
        self.accounting_reads = 0
        self._awaiting: dict[str, float] = {}  # attempt -> when its record was first missed
        self._unreadable_logged = False

    @property
    def memory_enforced(self) -> bool:
        return self.memory_resource in ENFORCED_MEMORY_RESOURCES

    def _accounting_path(self) -> Path | None:
        configured = str(self.options.get("accounting_file") or "")
        if configured:
            return None if configured == "none" else Path(configured)
        root = str(self.options.get("sge_root") or "") or os.environ.get("SGE_ROOT", "")
        cell = (str(self.options.get("sge_cell") or "") or os.environ.get("SGE_CELL", "")
                or "default")
        return Path(root, cell, "common", "accounting") if root else None

    def resource_arguments(self, job: JobSpec) -> list[str]:
        return sge_resource_arguments(
            job, system=self.name, default_queue=self.queue,
            parallel_environment=self.parallel_environment,
            memory_resource=self.memory_resource)

    # ------------------------------------------------------------------ run as an account
    def run(self, job: JobSpec) -> Submission:
        """Through DRMAA; a job with an account through ``qsub`` run as the account
        (:meth:`_run_as_account`)."""
        if job.account is None:
            return super().run(job)
        return self._run_as_account(job)

    def _run_as_account(self, job: JobSpec) -> Submission:
        """DRMAA submits as the user of its session and has no switch, so a job that runs as
        an account is submitted by ``qsub`` run as the account (``runuser``): the cell records
        the account as the job's owner. The job is the one DRMAA would submit (``-b y /bin/sh
        <script>`` in the job directory, named by its tag, the scheduler log joined), so
        status, kills, evidence and ``find`` treat it as any job: the daemon's session sees
        jobs it did not submit as it does after a restart. Raises SubmissionRejected or
        SystemUnavailable (after looking the job up by its tag)."""
        if not job.script.is_file():
            raise SubmissionRejected(self.name, f"job script {job.script} is missing")
        log_path = str(job.scheduler_log)
        argv = ["-terse", "-N", job.tag, "-wd", str(job.job_dir), "-o", log_path,
                "-e", log_path, "-j", "y", *shlex.split(self.native_specification(job)),
                "-b", "y", "/bin/sh", str(job.script)]
        try:
            result = self._command("qsub", *argv, job=job)
        except SystemUnavailable:
            native_id = self.find(job)
            if native_id is None:
                raise
            records.record_native_id(job.job_dir, native_id)
            return Submission(native_id)
        native_id = result.stdout.strip().split(".")[0] if result.ok else ""
        if not native_id.isdigit():
            if not result.ok and looks_transient(result.output):
                raise SystemUnavailable(self.name, result.describe())
            raise SubmissionRejected(self.name, f"{self.scheduler} refused the job: "
                                                f"{result.output or result.describe()}")
        records.record_native_id(job.job_dir, native_id)
        return Submission(native_id)

    # ------------------------------------------------------------------ find
    def _command(self, name: str, *args: str, job: JobSpec | None = None) -> CommandResult:
        """Run the cell's command ``name``; as ``job``'s account when it has one."""
        env = dict(os.environ)
        for key, variable in (("sge_root", "SGE_ROOT"), ("sge_cell", "SGE_CELL")):
            if self.options.get(key):
                env[variable] = str(self.options[key])
        path = str(Path(self.bin_dir) / name) if self.bin_dir else name
        argv = [path, *args] if job is None else as_account(self.name, job, [path, *args])
        return run_command(argv, system=self.name, timeout=self.command_timeout, env=env)

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

    # ------------------------------------------------------------------ evidence
    def ended_evidence(self, ended: Sequence[EndedJob]) -> dict[str, Evidence]:
        """The accounting record of each ended job (read once for all of them), else its
        ``JobInfo``; a job whose end needs a record that is not written yet awaits it
        (:data:`~execution_engine.systems.accounting.AWAITED`), up to ``accounting_wait``."""
        evidence = super().ended_evidence(ended)
        found = self._accounting_records(ended)
        now = time.monotonic()
        for end in ended:
            job = end.job
            record = None if found is None else found.get(job.native_id or "")
            if record is not None:
                self._awaiting.pop(_wait_key(job), None)
                evidence[job.job_id] = job_end_evidence(
                    record, job.resources, source="Grid Engine accounting",
                    memory_enforced=self.memory_enforced)
            elif found is not None and job.job_id not in evidence and self._awaits(job, now):
                evidence[job.job_id] = AWAITED
        self._forget_stale(now)
        return evidence

    def _accounting_records(self, ended: Sequence[EndedJob]) -> dict[str, JobEndRecord] | None:
        """Job number -> accounting record of the ended jobs, from one read of the file's end;
        None when there is no accounting file to read (then nothing is awaited)."""
        if self.accounting_file is None:
            return None
        wanted = {end.job.native_id: end.job.tag for end in ended
                  if end.job.native_id and end.job.native_id.isdigit()}
        if not wanted:
            return {}
        self.accounting_reads += 1
        try:
            return read_accounting_tail(self.accounting_file, wanted,
                                        since=_oldest_submission([e.job for e in ended]))
        except OSError as exc:
            if not self._unreadable_logged:
                self._unreadable_logged = True
                log.warning("%s: cannot read the Grid Engine accounting file (%s): the causes "
                            "of job ends are unknown", self.name, exc)
            return None

    def _awaits(self, job: JobSpec, now: float) -> bool:
        """True while the end of ``job`` should wait for its accounting record: its exit code
        does not say how it ended (none, or a signal's) and the engine did not kill it, for
        ``accounting_wait`` seconds from the first miss."""
        code = read_exit_code(job)
        if (code is not None and code <= 128) or records.recorded_kill(
                job.job_dir, job.native_id) is not None:
            return False
        first = self._awaiting.setdefault(_wait_key(job), now)
        if now - first < self.accounting_wait:
            return True
        del self._awaiting[_wait_key(job)]
        log.info("%s: no accounting record of job %s (%s) after %.0f s: its cause is unknown",
                 self.name, job.job_id, job.native_id, self.accounting_wait)
        return False

    def _forget_stale(self, now: float) -> None:
        """Drop waits of jobs no longer asked about (killed, or followed elsewhere)."""
        horizon = 2 * self.accounting_wait + 60
        for key in [k for k, first in self._awaiting.items() if now - first > horizon]:
            del self._awaiting[key]


def _wait_key(job: JobSpec) -> str:
    """A job's attempt (a resubmitted job is another scheduler job, waited for anew)."""
    return f"{job.job_id}:{job.native_id}"


def _oldest_submission(jobs: Sequence[JobSpec]) -> float | None:
    """The earliest time (seconds since the epoch) any of ``jobs`` can have ended: its
    submission, as the time its native id was recorded, less a clock slack; None when one of
    them has no record."""
    times = []
    for job in jobs:
        try:
            times.append((job.job_dir / records.NATIVE_ID_NAME).stat().st_mtime)
        except OSError:
            return None
    return min(times) - _CLOCK_SLACK if times else None
