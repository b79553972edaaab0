"""Slurm, through its commands (``sbatch``, ``squeue``, ``scancel``, ``scontrol``, ``sacct``).

* Submission: ``sbatch --parsable -J <tag> -o <job dir>/.execd/scheduler.log -D <job dir>
  --export=NONE`` plus ``--partition``, ``--cpus-per-task``, ``--mem`` and ``--time`` from the
  job's requirements. Slurm refuses impossible requests at submission when the site sets
  ``EnforcePartLimits`` (otherwise they stay pending, reason "PartitionConfig" or similar).
* Status: one ``squeue -h -t all -o '%i|%T|%r|%S|%e|%N' -j id1,id2,...`` per cycle (``--me``
  instead of the ids when their list would not fit in one argument). ``-t all`` keeps finished
  jobs visible until ``MinJobAge``. Quirk: with a single unknown id squeue exits 1
  ("Invalid job id specified"), with several it lists the known ones and exits 0. Jobs squeue no
  longer lists are over: their exit-code files say how; the accounting (``sacct -c``, which reads
  the jobcomp file, or ``sacct`` with slurmdbd) is asked once per cycle about all of them, to
  say why they ended and what they used.
* Why a job ended: its end state, from squeue or the accounting
  (:data:`~execution_engine.systems.accounting.SLURM_REASONS`: ``TIMEOUT`` and ``DEADLINE`` are
  walltime_exceeded, ``OUT_OF_MEMORY`` memory_exceeded, ``NODE_FAIL`` and ``BOOT_FAIL``
  node_failure, ``PREEMPTED`` preempted, ``CANCELLED`` killed_by_system); its wall time from its
  start and end, its node from the node list. A job gone from squeue that the accounting does
  not show, or cannot be asked about (none configured, no jobcomp file, "job completion is
  disabled"), ended for an unknown cause.
* A pending job with reason ``JobHeldUser``/``JobHeldAdmin`` is reported ``hold``.
* Hold: ``scontrol hold`` then ``scontrol suspend`` (a running job cannot be held, only
  suspended; ``suspend`` fails harmlessly on a pending one). Release: ``scontrol release`` then
  ``scontrol resume``. Suspending needs Slurm operator rights.
* Kill: ``scancel`` (TERM, then KILL after the site's ``KillWait``); forced:
  ``scancel --signal=KILL --full``. A job ``CANCELLED`` (by an operator, or by Slurm itself) is
  reported ``killed`` with Slurm's words, unless its exit-code file says it completed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from execution_engine.errors import SystemUnavailable
from execution_engine.states import JobState
from execution_engine.systems.accounting import (
    SACCT_FIELDS,
    Evidence,
    SlurmRecord,
    parse_sacct_records,
    slurm_nodes,
    slurm_state,
    slurm_timestamp,
)
from execution_engine.systems.base import JobSpec, StatusReport, ended_report
from execution_engine.systems.batch import BatchSystem, CommandResult, check_name
from execution_engine.systems.records import NATIVE_ID_NAME

log = logging.getLogger(__name__)

_ENDED = JobState.FINISHED  # "over": the exit-code file says how

#: squeue's long state names (``%T``) -> engine states.
SLURM_STATES: Mapping[str, JobState | None] = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "POWER_UP_NODE": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.HOLD,
    "RESV_DEL_HOLD": JobState.HOLD,
    "SPECIAL_EXIT": JobState.HOLD,
    "SUSPENDED": JobState.HOLD,
    "STOPPED": JobState.HOLD,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "UPDATE_DB": JobState.RUNNING,
    "COMPLETED": _ENDED,
    "FAILED": JobState.ERROR,
    "CANCELLED": JobState.KILLED,
    "TIMEOUT": JobState.ERROR,
    "DEADLINE": JobState.ERROR,
    "NODE_FAIL": JobState.ERROR,
    "BOOT_FAIL": JobState.ERROR,
    "OUT_OF_MEMORY": JobState.ERROR,
    "PREEMPTED": JobState.ERROR,
    "REVOKED": JobState.ERROR,
}

#: Pending reasons that mean "held".
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
_HELD = "PENDING(held)"

#: id, state, reason, start and end times, node list: the state for following the job, the
#: rest as the evidence of how an ended job ended.
STATUS_FORMAT = "%i|%T|%r|%S|%e|%N"
#: Beyond this many characters, the id list would not fit in one argument (the kernel caps one
#: argument at 128 KiB): squeue then lists all of this user's jobs instead, still in one call.
MAX_ID_LIST = 100_000
#: Seconds before a job's recorded submission from which the accounting is searched for it
#: (the clocks of this host and of the controller may differ a little).
_CLOCK_SLACK = 3600.0


# ---------------------------------------------------------------------- builders and parsers
def slurm_time(seconds: int) -> str:
    """A duration as Slurm's ``days-hours:minutes:seconds``."""
    minutes, secs = divmod(max(int(seconds), 1), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"


def resource_arguments(job: JobSpec, default_partition: str = "", system: str = "slurm"
                       ) -> list[str]:
    """sbatch options for the job's requirements."""
    res = job.resources
    args = []
    partition = res.queue or default_partition
    if partition:
        args.append(f"--partition={check_name(system, 'partition', partition)}")
    if res.cores:
        args.append(f"--cpus-per-task={res.cores}")
    if res.memory_mb:
        args.append(f"--mem={res.memory_mb}M")
    if res.walltime_s:
        args.append(f"--time={slurm_time(res.walltime_s)}")
    return args


def parse_sbatch_output(stdout: str) -> str | None:
    """The job id printed by ``sbatch --parsable`` (``id`` or ``id;cluster``)."""
    for line in reversed(stdout.strip().splitlines()):
        native_id = line.strip().split(";", 1)[0]
        if native_id.isdigit():
            return native_id
    return None


def parse_squeue_output(stdout: str) -> dict[str, str]:
    """``id|STATE|reason`` lines -> id -> state; a held pending job gets ``PENDING(held)``."""
    states = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        native_id, state = parts[0], parts[1].rstrip("+")
        reason = parts[2] if len(parts) > 2 else ""
        if state == "PENDING" and reason in HELD_REASONS:
            state = _HELD
        states[native_id] = state
    return states


def parse_squeue_records(stdout: str) -> dict[str, SlurmRecord]:
    """:data:`STATUS_FORMAT` lines -> id -> record (state, start, end, nodes), the evidence of
    how the listed jobs that are over ended."""
    records = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6 or not parts[0]:
            continue
        records[parts[0]] = SlurmRecord(
            job_id=parts[0], state=slurm_state(parts[1]), start=slurm_timestamp(parts[3]),
            end=slurm_timestamp(parts[4]), nodes=slurm_nodes(parts[5]))
    return records


def accounting_selection(jobs: Sequence[JobSpec]) -> list[str]:
    """``sacct`` options selecting ``jobs``: their ids (``-j``), or, when the list would not fit
    in one argument, every job that started since the earliest of their submissions (``-S``,
    the time their native ids were recorded; ``sacct -c`` ignores it and lists its whole log);
    still one call."""
    id_list = ",".join(job.native_id for job in jobs if job.native_id)
    if len(id_list) <= MAX_ID_LIST:
        return ["-j", id_list]
    times = []
    for job in jobs:
        try:
            times.append((job.job_dir / NATIVE_ID_NAME).stat().st_mtime)
        except OSError:
            continue  # submitted before records were kept, or forged: the default window
    if not times:
        return []
    since = datetime.fromtimestamp(min(times) - _CLOCK_SLACK)
    return ["-S", since.strftime("%Y-%m-%dT%H:%M:%S")]


def newest_id(ids: Sequence[str]) -> str | None:
    """The highest numeric job id of ``ids`` (the latest submission), or None."""
    numeric = [i for i in ids if i.isdigit()]
    return max(numeric, key=int) if numeric else None


# ---------------------------------------------------------------------- the system
class SlurmSystem(BatchSystem):
    """Jobs submitted to Slurm with ``sbatch``; see the module docstring."""

    kind: ClassVar[str] = "slurm"
    scheduler: ClassVar[str] = "Slurm"
    _STATE_MAP: ClassVar[Mapping[str, JobState | None]] = {**SLURM_STATES, _HELD: JobState.HOLD}
    option_spec: ClassVar[Mapping[str, str]] = {
        **BatchSystem.option_spec,
        "accounting": "option('jobcomp', 'sacct', 'none', default='jobcomp')",
        "export_environment": "boolean(default=False)",
    }
    """``accounting``: how to ask about jobs squeue has forgotten: ``jobcomp`` = ``sacct -c``
    (the jobcomp/filetxt file), ``sacct`` = ``sacct`` with slurmdbd, ``none``. The exit-code
    file decides the outcome either way; accounting only explains a job that left none.
    ``export_environment``: pass the submitting process's environment to jobs (sbatch's default);
    off, jobs get only Slurm's variables plus what their script sets."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.accounting = str(self.options.get("accounting") or "jobcomp")
        self.export_environment = bool(self.options.get("export_environment", False))

    # ------------------------------------------------------------------ commands
    def submit_command(self, job: JobSpec) -> list[str]:
        argv = [self.command("sbatch"), "--parsable", "-J", job.tag,
                "-o", str(job.scheduler_log), "-D", str(job.job_dir)]
        if not self.export_environment:
            argv.append("--export=NONE")
        argv += resource_arguments(job, self.queue, self.name)
        argv += self.submit_options
        argv.append(str(job.script))
        return argv

    def parse_submit_output(self, stdout: str) -> str | None:
        return parse_sbatch_output(stdout)

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        argv = [self.command("squeue"), "-h", "-t", "all", "-o", STATUS_FORMAT]
        id_list = ",".join(native_ids)
        return [*argv, "--me"] if len(id_list) > MAX_ID_LIST else [*argv, "-j", id_list]

    def status_ok(self, result: CommandResult) -> bool:
        # One unknown id alone: exit 1 "Invalid job id specified" (several: exit 0).
        return bool(result.ok or (result.returncode == 1 and not result.stdout.strip()
                                  and "invalid job id specified" in result.stderr.lower()))

    def parse_status_output(self, stdout: str) -> dict[str, str]:
        return parse_squeue_output(stdout)

    def status_evidence(self, stdout: str) -> Mapping[str, Evidence]:
        return {job_id: record.evidence()
                for job_id, record in parse_squeue_records(stdout).items()}

    def kill_command(self, native_id: str, force: bool) -> list[str]:
        if force:
            return [self.command("scancel"), "--signal=KILL", "--full", native_id]
        return [self.command("scancel"), native_id]

    def hold_commands(self, native_id: str) -> list[list[str]]:
        scontrol = self.command("scontrol")
        return [[scontrol, "hold", native_id], [scontrol, "suspend", native_id]]

    def release_commands(self, native_id: str) -> list[list[str]]:
        scontrol = self.command("scontrol")
        return [[scontrol, "release", native_id], [scontrol, "resume", native_id]]

    def find_command(self, job: JobSpec) -> list[str]:
        return [self.command("squeue"), "-h", "-t", "all", "-n", job.tag, "-o", "%i"]

    def parse_find_output(self, stdout: str, job: JobSpec) -> str | None:
        return newest_id([line.strip() for line in stdout.splitlines()])

    # ------------------------------------------------------------------ accounting
    def _sacct(self, extra: Sequence[str]) -> dict[str, SlurmRecord] | None:
        """Accounting records (job id -> record), or None when there is no accounting or it
        cannot answer (no jobcomp file, "job completion is disabled", no slurmdbd, a hung
        command): that only leaves the cause of an end unknown, it fails nothing."""
        if self.accounting == "none":
            return None
        argv = [self.command("sacct"), "-n", "-P", "-o", ",".join(SACCT_FIELDS)]
        if self.accounting == "jobcomp":
            argv.insert(1, "-c")
        try:
            result = self.execute([*argv, *extra])
        except SystemUnavailable as exc:  # no sacct here, or it hangs: it only adds evidence
            log.debug("%s: %s", self.name, exc)
            return None
        if not result.ok:
            log.debug("%s: %s", self.name, result.describe())
            return None
        return parse_sacct_records(result.stdout)

    def resolve_missing(self, jobs: Sequence[JobSpec]) -> dict[str, StatusReport]:
        """Jobs squeue has forgotten: ended, from their exit-code files, with the accounting's
        evidence of why and what they used, asked in one call for all of them."""
        records: dict[str, SlurmRecord] | None = None
        ids = [job.native_id for job in jobs if job.native_id]
        if ids and self.accounting != "none":
            self.status_commands += 1
            records = self._sacct(accounting_selection(jobs))
        return {job.job_id: self._gone_report(job, records) for job in jobs}

    def _gone_report(self, job: JobSpec, records: Mapping[str, SlurmRecord] | None
                     ) -> StatusReport:
        """The end of a job squeue no longer lists. ``records``: the accounting's, None when it
        could not be asked. A job without a record has no cause: its absence does not show
        that Slurm lost it (``sacct -c`` creates a missing jobcomp file empty and answers for
        it, and a rotated log has forgotten older jobs)."""
        record = None if records is None else records.get(job.native_id or "")
        if record is not None:
            evidence = record.evidence()
            said = f"(Slurm accounting: state {record.state}, exit code {record.exit_code})"
            return ended_report(job, said, SLURM_STATES.get(record.state),
                                reason=evidence.reason, usage=evidence.usage)
        if records is not None:
            return ended_report(job, "(no longer known to Slurm, nor to its accounting)")
        return ended_report(job, "(no longer known to Slurm)")

    def find_in_accounting(self, job: JobSpec) -> str | None:
        # ``sacct -c`` ignores --name: filter the records ourselves.
        records = self._sacct(["--name", job.tag])
        if not records:
            return None
        return newest_id([jid for jid, record in records.items() if record.name == job.tag])
