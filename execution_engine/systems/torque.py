"""Torque/PBS, through its commands (``qsub``, ``qstat``, ``qdel``, ``qhold``, ``qrls``) or, at
sites with pbs-drmaa, through DRMAA (option ``mode``).

Command mode (the default, :class:`TorqueCliSystem`):

* Submission: ``qsub -N <tag> -o <job dir>/.execd/scheduler.log -j oe -w <job dir>`` plus
  ``-q <queue>`` and ``-l nodes=1:ppn=<cores>,mem=<MB>mb,walltime=<hh:mm:ss>``; ``qsub`` prints
  the job id. (``-w`` sets the working directory; ``-d`` is not understood everywhere.)
* Status: one ``qstat -f id1 id2 ...`` per cycle (full listing: job names are not cut). ``qstat``
  exits 153 when some or all of the ids are unknown (purged, or never were): the ones it lists
  are parsed, the others are over and resolved from their exit-code files. State ``C``
  (completed) says nothing of how a job ended (Slurm's Torque wrappers show C for every end):
  the exit-code file decides. Held jobs show ``H`` in Torque; Slurm's wrappers show them as
  ``Q`` (queued), so there a held job is reported ``pending``.
* Why a job ended: Torque's ``exit_status`` of a completed job, in the same ``qstat -f``
  (:func:`~execution_engine.systems.accounting.torque_evidence`: -11 walltime_exceeded, -10
  memory_exceeded, -4 to -6 node_failure; above 256 the MOM killed the job with a signal, for
  the limit its ``resources_used`` reached, else killed_by_system), with ``resources_used``
  (walltime, cput, mem) and the node of ``exec_host`` as its usage. Slurm's wrappers show no
  ``exit_status`` nor ``resources_used``: there only the node is known, and the cause of an end
  is the exit code's. A job ``qstat`` no longer lists has no evidence left (Torque keeps
  completed jobs only ``keep_completed`` seconds).
* Kill: ``qdel``; a finished job makes it fail, which is not an error. Hold/release: ``qhold``
  and ``qrls`` (a running job cannot be held).
* Commands are taken from ``bin_dir`` when set (Slurm's wrappers cannot share /usr/bin with
  Grid Engine's commands of the same names).

DRMAA mode (:class:`PbsDrmaaSystem`, ``mode = drmaa``): the DRMAA base with the same resource
arguments as the native specification, and ``library`` pointing at pbs-drmaa's libdrmaa. It
shares every code path of the Grid Engine system but cannot be tested here: no pbs-drmaa
library exists for Debian's Slurm or Torque, so only its construction and native
specification are tested.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from execution_engine.states import JobState
from execution_engine.systems.accounting import Evidence, torque_evidence
from execution_engine.systems.base import ExecutionSystem, JobSpec, StatusReport, Submission
from execution_engine.systems.batch import BatchSystem, CommandResult, check_name
from execution_engine.systems.drmaa_base import DrmaaSystem, drmaa_process_environment

_ENDED = JobState.FINISHED  # "over": the exit-code file says how

#: Torque/PBS job states (``job_state``) -> engine states.
TORQUE_STATES: Mapping[str, JobState | None] = {
    "Q": JobState.PENDING,  # queued
    "W": JobState.PENDING,  # waiting for its start time
    "T": JobState.PENDING,  # in transit to another server
    "H": JobState.HOLD,  # held
    "S": JobState.HOLD,  # suspended
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,  # exiting after having run
    "B": JobState.RUNNING,  # array job begun (PBS Pro)
    "C": _ENDED,  # completed (however it ended)
    "F": _ENDED,  # finished (PBS Pro)
    "X": _ENDED,  # sub-job finished (PBS Pro)
    "U": None,  # Slurm's wrappers: a Slurm state they do not translate
    "M": None,  # moved to another server
}

_JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.\S+)?$")
#: Beyond this many characters of ids, ``qstat -f`` lists all jobs instead (the command line has
#: a size limit); still one call.
MAX_ID_ARGS = 1_000_000


def torque_walltime(seconds: int) -> str:
    hours, rest = divmod(max(int(seconds), 1), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def resource_arguments(job: JobSpec, default_queue: str = "", system: str = "torque"
                       ) -> list[str]:
    """qsub (or pbs-drmaa native specification) arguments for the job's requirements."""
    res = job.resources
    args = []
    queue = res.queue or default_queue
    if queue:
        args += ["-q", check_name(system, "queue", queue)]
    resources = []
    if res.cores:
        resources.append(f"nodes=1:ppn={res.cores}")
    if res.memory_mb:
        resources.append(f"mem={res.memory_mb}mb")
    if res.walltime_s:
        resources.append(f"walltime={torque_walltime(res.walltime_s)}")
    if resources:
        args += ["-l", ",".join(resources)]
    return args


def parse_qsub_output(stdout: str) -> str | None:
    """The job id ``qsub`` printed (``123`` or ``123.server``), or None."""
    for line in reversed(stdout.strip().splitlines()):
        if _JOB_ID.match(line.strip()):
            return line.strip()
    return None


def parse_qstat_full(stdout: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` output -> job id -> attributes (``job_state``, ``Job_Name``, ...).

    Accepts Torque's layout (``Job Id: 12.server`` then indented ``key = value`` lines, long
    values continued on lines without ``=``) and that of Slurm's wrappers (tab-separated).
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key = ""
    for raw in stdout.splitlines():
        line = raw.strip()
        if line.startswith("Job Id:"):
            current = jobs.setdefault(line[len("Job Id:"):].strip(), {})
            last_key = ""
        elif current is not None and " = " in line:
            key, _, value = line.partition(" = ")
            last_key = key.strip()
            current[last_key] = value.strip()
        elif current is not None and line and last_key and raw[:1] == "\t":
            current[last_key] += line  # continuation of a long value
    return jobs


def sequence_number(native_id: str) -> str:
    """``123`` of ``123.server.domain``."""
    return native_id.split(".", 1)[0]


class TorqueCliSystem(BatchSystem):
    """Torque/PBS through its commands; see the module docstring."""

    kind: ClassVar[str] = "torque"
    scheduler: ClassVar[str] = "Torque"
    _STATE_MAP: ClassVar[Mapping[str, JobState | None]] = TORQUE_STATES

    def submit_command(self, job: JobSpec) -> list[str]:
        return [self.command("qsub"), "-N", job.tag, "-o", str(job.scheduler_log),
                "-j", "oe", "-w", str(job.job_dir),
                *resource_arguments(job, self.queue, self.name), *self.submit_options,
                str(job.script)]

    def parse_submit_output(self, stdout: str) -> str | None:
        return parse_qsub_output(stdout)

    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        if sum(len(i) + 1 for i in native_ids) > MAX_ID_ARGS:
            return [self.command("qstat"), "-f"]
        return [self.command("qstat"), "-f", *native_ids]

    def status_ok(self, result: CommandResult) -> bool:
        # 153: some (or all) of the ids are unknown; the known ones are listed all the same.
        return result.returncode in (0, 153)

    def parse_status_output(self, stdout: str) -> dict[str, str]:
        return {job_id: attrs.get("job_state", "")
                for job_id, attrs in parse_qstat_full(stdout).items()}

    def status_evidence(self, stdout: str) -> Mapping[str, Evidence]:
        return {job_id: torque_evidence(attrs)
                for job_id, attrs in parse_qstat_full(stdout).items()}

    def same_job(self, listed_id: str, native_id: str) -> bool:
        # qsub may print "12.server" and qstat list "12.server.domain".
        return sequence_number(listed_id) == sequence_number(native_id)

    def kill_command(self, native_id: str, force: bool) -> list[str]:
        return [self.command("qdel"), native_id]

    def hold_commands(self, native_id: str) -> list[list[str]]:
        return [[self.command("qhold"), native_id]]

    def release_commands(self, native_id: str) -> list[list[str]]:
        return [[self.command("qrls"), native_id]]

    def find_command(self, job: JobSpec) -> list[str]:
        return [self.command("qstat"), "-f"]

    def find_ok(self, result: CommandResult) -> bool:
        return result.returncode == 0 or (result.returncode == 153 and not result.stdout.strip())

    def parse_find_output(self, stdout: str, job: JobSpec) -> str | None:
        ids = [job_id for job_id, attrs in parse_qstat_full(stdout).items()
               if attrs.get("Job_Name") == job.tag]
        numeric = [i for i in ids if sequence_number(i).isdigit()]
        return max(numeric, key=lambda i: int(sequence_number(i))) if numeric else None


class PbsDrmaaSystem(DrmaaSystem):
    """Torque/PBS through pbs-drmaa: the DRMAA base with Torque's resource arguments."""

    kind: ClassVar[str] = "torque"
    scheduler: ClassVar[str] = "Torque"

    def resource_arguments(self, job: JobSpec) -> list[str]:
        return resource_arguments(job, self.queue, self.name)

    def find(self, job: JobSpec) -> str | None:
        """DRMAA cannot look a job up by name: ``qstat`` from ``bin_dir`` does it."""
        return TorqueCliSystem(self.name, self.options).find(job)


class TorqueSystem(ExecutionSystem):
    """Torque/PBS: commands (``mode = cli``) or pbs-drmaa (``mode = drmaa``).

    One configuration class for both ways of talking to Torque; the work is done by a
    :class:`TorqueCliSystem` or a :class:`PbsDrmaaSystem` (``backend``).
    """

    kind: ClassVar[str] = "torque"
    default_status_interval: ClassVar[float] = 2.0
    option_spec: ClassVar[Mapping[str, str]] = {
        **BatchSystem.option_spec,
        "mode": "option('cli', 'drmaa', default='cli')",
        "library": 'string(default="")',
        "native_specification": 'string(default="")',
    }
    """``mode``: ``cli`` (qsub/qstat/qdel from ``bin_dir``) or ``drmaa`` (pbs-drmaa, the library
    at ``library``, ``native_specification`` added to every job's). The other options are those
    of :class:`~execution_engine.systems.batch.BatchSystem` (``bin_dir``, ``queue``,
    ``submit_options``, ``command_timeout``); ``queue`` serves both modes."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.mode = str(self.options.get("mode") or "cli")
        self.backend: BatchSystem | DrmaaSystem = (
            PbsDrmaaSystem(name, self.options) if self.mode == "drmaa"
            else TorqueCliSystem(name, self.options))

    @classmethod
    def process_environment(cls, options: Mapping[str, Any]) -> dict[str, str]:
        return drmaa_process_environment(options) if options.get("mode") == "drmaa" else {}

    @property
    def status_calls(self) -> int:
        return self.backend.status_calls

    def run(self, job: JobSpec) -> Submission:
        return self.backend.run(job)

    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        return self.backend.get_statuses(jobs)

    def kill(self, job: JobSpec, force: bool = False) -> None:
        self.backend.kill(job, force)

    def find(self, job: JobSpec) -> str | None:
        return self.backend.find(job)

    def hold(self, job: JobSpec) -> None:
        self.backend.hold(job)

    def release(self, job: JobSpec) -> None:
        self.backend.release(job)

    def close(self) -> None:
        self.backend.close()
