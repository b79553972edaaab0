"""The contract between the engine and an execution system (Local, Grid Engine, Torque, Slurm...).

An execution system knows how to start a built job, tell how its jobs are doing, and stop one. It
never touches MongoDB: the Submit and Status actors turn what it returns into job state changes.
Everything it needs about a job comes in a :class:`JobSpec`.

Error contract, for every method:

* :class:`~execution_engine.errors.SubmissionRejected` (from ``run``): the system refused the job
  for good; the job ends in ``error`` with the message.
* :class:`~execution_engine.errors.SystemUnavailable` (any method): the system cannot answer now;
  nothing is decided about the job and the engine retries with backoff. A scheduler outage must
  never turn into failed jobs.
* :class:`~execution_engine.errors.NoCapacity` (from ``run``): no free slot now; the job waits.
* Any other exception is a bug in the system plugin; the engine logs it with the system's name and
  treats it as ``SystemUnavailable`` for status and kill, and as a rejection for ``run``.

Kill safety: ``JobSpec.native_id`` comes from the job document, which clients can write. A
system acts on a job (``kill``, ``hold``, ``release``) only when the id is one the engine
recorded itself for that job under ``<job_dir>/.execd/`` (:mod:`~execution_engine.systems.records`)
or, for a scheduler, names a job called ``JobSpec.tag``; anything else is refused with a warning
and nothing is signalled.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from execution_engine.states import JobState
from execution_engine.systems import records

if TYPE_CHECKING:
    from execution_engine.identity import Account

#: Files the job script writes into the job directory, relative to it. The exit-code file is the
#: truth about how a job ended: schedulers forget finished jobs, the file stays.
ENGINE_DIR = records.ENGINE_DIR
SCRIPT_FILE = "job.sh"
SCRIPT_NAME = f"{ENGINE_DIR}/{SCRIPT_FILE}"
EXIT_CODE_NAME = f"{ENGINE_DIR}/exit_code"
PID_NAME = f"{ENGINE_DIR}/pid"
USAGE_NAME = f"{ENGINE_DIR}/usage"
SCHEDULER_LOG_NAME = f"{ENGINE_DIR}/scheduler.log"
STDOUT_NAME = "job.stdout"
STDERR_NAME = "job.stderr"


@dataclass(frozen=True)
class Resources:
    """What a job asks of the execution system. ``None`` means "the system's default"."""

    cores: int | None = None
    memory_mb: int | None = None
    walltime_s: int | None = None
    queue: str | None = None
    software: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, requirements: Mapping[str, Any] | None) -> Resources:
        """Resources from a validated job document's ``requirements`` field."""
        req = requirements or {}
        return cls(
            cores=req.get("cores"),
            memory_mb=req.get("memory_mb"),
            walltime_s=req.get("walltime_s"),
            queue=req.get("queue"),
            software=tuple(req.get("software", ())),
        )


@dataclass(frozen=True)
class JobSpec:
    """Everything an execution system is told about one job."""

    job_id: str
    name: str
    job_dir: Path
    owner: str | None = None
    project: str | None = None
    resources: Resources = field(default_factory=Resources)
    native_id: str | None = None
    """Set once the job was submitted: what ``get_statuses`` and ``kill`` refer to."""
    attempt: int = 1
    """Which run of the job this is (a resubmission is a new attempt, in a fresh directory)."""
    account: Account | None = None
    """The local account the job runs as ([identity] mapping), None for the daemon's own.
    Only the Submit actor sets it (for ``run``); status and kills need no account."""

    @property
    def tag(self) -> str:
        """The name the job carries at the scheduler; unique per attempt, so that recovery can
        find a job whose submission was not recorded (see :meth:`ExecutionSystem.find`), and
        never takes an earlier attempt's for it."""
        return f"execd-{self.job_id}" + (f".{self.attempt}" if self.attempt > 1 else "")

    @property
    def script(self) -> Path:
        return self.job_dir / SCRIPT_NAME

    @property
    def exit_code_file(self) -> Path:
        return self.job_dir / EXIT_CODE_NAME

    @property
    def scheduler_log(self) -> Path:
        return self.job_dir / SCHEDULER_LOG_NAME


@dataclass(frozen=True)
class Submission:
    """What ``run`` returns: the scheduler's id for the job and its state right after submission."""

    native_id: str
    state: JobState = JobState.SUBMITTED


@dataclass(frozen=True)
class StatusReport:
    """How one job is doing, as seen by its execution system.

    ``state`` is an engine state (pending, running, hold, finished, error, killed) or ``None`` for
    "unknown for now" (the job is left alone). For an ended job, ``exit_code`` comes from the job's
    exit-code file when it has one. ``killed`` means the job was stopped from outside (by the
    scheduler, an operator, or the engine's own kill), with who said so in ``message``.
    """

    state: JobState | None
    exit_code: int | None = None
    message: str = ""
    reason: str | None = None
    """Why an ended job ended, when the system has evidence of it (a :class:`Reason` value, or
    a plugin's ``x-...`` reason): walltime or memory exceeded, node failure, preemption... None
    lets the engine derive it from the state and exit code (never a guess)."""
    usage: Usage | None = None
    """What an ended job used, where the system can tell."""


@dataclass(frozen=True)
class Usage:
    """What a job used, as far as its execution system can tell; None is "not known"."""

    wall_s: float | None = None
    cpu_s: float | None = None
    """User and system CPU time of the job's processes, in seconds."""
    max_rss_mb: float | None = None
    """The largest resident memory of the job (its largest process where only that is known)."""
    signal: str | None = None
    """The signal that ended the job's command (``SIGKILL``), when one did."""
    node: str | None = None

    def as_document(self) -> dict[str, Any]:
        """The job document's ``usage`` field: the known figures only."""
        return {field.name: value for field in dataclasses.fields(self)
                if (value := getattr(self, field.name)) is not None}

    @property
    def measured(self) -> bool:
        """Whether every figure a job script's usage record could give is known already."""
        return None not in (self.wall_s, self.cpu_s, self.max_rss_mb)

    def or_else(self, other: Usage | None) -> Usage:
        """These figures, with ``other``'s where these are not known."""
        if other is None:
            return self
        return Usage(**{key: other_value if value is None else value
                        for (key, value), other_value in zip(
                            dataclasses.asdict(self).items(),
                            dataclasses.asdict(other).values(), strict=True)})


def read_usage(job: JobSpec) -> Usage | None:
    """What the job script recorded of the command's usage in ``.execd/usage`` (None when it
    recorded nothing): ``key=value`` lines, ``wall`` (seconds), ``user`` and ``sys`` (CPU
    seconds, summed) and ``maxrss_kb``; unknown keys and unreadable values are ignored."""
    text = records.read_record(job.job_dir, USAGE_NAME)  # never through a link
    if text is None:
        return None
    figures: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        try:
            figures[key.strip()] = float(value)
        except ValueError:
            continue
    cpu = None
    if "user" in figures or "sys" in figures:
        cpu = round(figures.get("user", 0.0) + figures.get("sys", 0.0), 3)
    rss = figures.get("maxrss_kb")
    usage = Usage(wall_s=figures.get("wall"), cpu_s=cpu,
                  max_rss_mb=None if rss is None else round(rss / 1024, 1))
    return usage if usage.as_document() else None


def read_exit_code(job: JobSpec) -> int | None:
    """The exit code the job script recorded, or None while there is none (or it is half written).
    Read without following a link or blocking on a special file: the job's account may own
    the job directory and put anything there."""
    text = records.read_record(job.job_dir, EXIT_CODE_NAME)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def ended_report(job: JobSpec, native_says: str = "", native_state: JobState | None = None,
                 *, reason: str | None = None, usage: Usage | None = None,
                 exit_code: int | None = None) -> StatusReport:
    """The final report for a job the scheduler no longer runs, from its exit-code file.

    ``native_says`` is the scheduler's own word on the job, ``native_state`` the engine state
    its native state maps to (None when it said nothing, or the job is gone from it).

    * Exit code 0: ``finished`` (the command completed, even if a kill came too late to stop it).
    * Killed: ``killed`` when the scheduler says the job was cancelled (``native_state`` is
      ``killed``: an operator's ``scancel``, or the scheduler's own decision) or when the engine
      recorded that it killed the job (:func:`~execution_engine.systems.records.recorded_kill`);
      the message says who, in the scheduler's words, and the exit code if one was recorded.
    * Otherwise ``error``: the exit code in words, or, when the script recorded none (it was
      itself killed: a signal, the walltime, the node), saying so; with what the scheduler said
      when it said something else than "completed".

    ``reason`` and ``usage`` (the system's evidence of why the job ended and what it used) are
    passed on in the report; a job that exited 0 completed, whatever ``reason`` says.
    ``exit_code`` is the recorded exit code when the caller has read it already (None: it is
    read here).
    """
    report = _ended_report(job, native_says, native_state,
                           read_exit_code(job) if exit_code is None else exit_code)
    if report.state is JobState.FINISHED:
        reason = None
    if usage is None:
        usage = read_usage(job)
    elif not usage.measured:  # the record is read only when it could add something
        usage = usage.or_else(read_usage(job))
    return dataclasses.replace(report, reason=reason, usage=usage)


def _ended_report(job: JobSpec, native_says: str, native_state: JobState | None,
                  code: int | None) -> StatusReport:
    if code == 0:
        return StatusReport(JobState.FINISHED, 0)
    # The scheduler's words count when it said more than "over" (a job gone from its list, or
    # "completed", says nothing the exit code does not).
    said = native_says if native_state not in (None, JobState.FINISHED) else ""
    how = "without recording an exit code" if code is None else describe_exit_code(code)
    sent = records.recorded_kill(job.job_dir, job.native_id)
    if sent is not None:
        return StatusReport(JobState.KILLED, code, _joined(f"killed by the engine ({sent})", said,
                                                           how))
    if native_state is JobState.KILLED:
        return StatusReport(JobState.KILLED, code,
                            _joined("killed by the execution system", said, how))
    if code is None:
        reason = "the job ended without recording an exit code (killed by the system?)"
        return StatusReport(JobState.ERROR, None, f"{reason} {native_says}".strip())
    return StatusReport(JobState.ERROR, code, " ".join(p for p in (how, said) if p))


def _joined(who: str, said: str, how: str) -> str:
    return f"{who} {said}, {how}" if said else f"{who}, {how}"


def early_end_report(job: JobSpec, node: str | None = None) -> StatusReport | None:
    """The final report of a job whose script has recorded its exit code while the scheduler
    still lists it as live (on ``node``, when it says), or None to wait for the scheduler.

    A code the command exited with by itself (up to 128) is final at once. A code meaning "ended
    by a signal" (over 128) waits for the scheduler's own end state, which says whether the job
    was cancelled (reported ``killed``) or failed."""
    code = read_exit_code(job)
    if code is None or code > 128:
        return None
    return ended_report(job, usage=None if node is None else Usage(node=node), exit_code=code)


def describe_exit_code(code: int) -> str:
    """A job exit status in words: ``exit code 3`` or ``killed by signal 9 (SIGKILL)``."""
    if code > 128:
        try:
            name = signal.Signals(code - 128).name
            return f"exit code {code} (killed by signal {code - 128}, {name})"
        except ValueError:
            pass
    return f"exit code {code}"


class ExecutionSystem(ABC):
    """An execution system: where jobs run.

    One instance per configured system, created in each actor process that needs it, from its
    configuration section. Instances are used from one thread at a time.
    """

    #: The class name used in the ``class`` key of a system section of the config.
    kind: ClassVar[str] = ""
    #: True when only the host that started a job can see it (Local): status and kills of its jobs
    #: are done on that host only.
    host_bound: ClassVar[bool] = False
    #: Default seconds between two status cycles for this system (overridable per system).
    default_status_interval: ClassVar[float] = 5.0

    #: The class's own configuration keys, in configspec (``validate``) syntax, checked when the
    #: system is created; errors name the system's section and the key.
    option_spec: ClassVar[Mapping[str, str]] = {}

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        """``options`` are the checked keys of the system's config section, plus ``state_dir``:
        a directory of this system's own under the engine's state directory."""
        self.name = name
        self.options = dict(options)
        self.before_waiting: Callable[[], object] = _nothing
        """Called by :meth:`run` before it waits for capacity (a system that queues jobs
        itself never does): the engine records the submissions it has made so far, so that a
        job started before the wait is not unknown during it."""

    @classmethod
    def process_environment(cls, options: Mapping[str, Any]) -> dict[str, str]:
        """Environment variables a process must be *started* with to use this system.

        Some libraries can only be loaded when the process began with a given environment (a
        DRMAA library linking jemalloc needs extra static TLS reserved by glibc at start-up), so
        setting them later from the system itself is too late. The engine merges the answers of
        every configured system into the environment of the actor processes it spawns. ``options``
        are the checked options of one system section. Must not load anything: it is called in
        the master process. The default is no variable at all.
        """
        return {}

    @abstractmethod
    def run(self, job: JobSpec) -> Submission:
        """Submit the built job (its script is ``job.script``).

        On return the job is known to the system under ``Submission.native_id``. Raises
        SubmissionRejected, SystemUnavailable or NoCapacity (see the module docstring).
        """

    @abstractmethod
    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        """The status of every given job (each has ``native_id``), keyed by ``job_id``, asked of the
        scheduler in one batch (one ``squeue``/``qstat``/DRMAA pass for all, not one per job).

        A job the scheduler has forgotten is resolved from its exit-code file
        (:func:`ended_report`). A job missing from the result is treated as unknown for now.
        Raises SystemUnavailable when the scheduler cannot be asked.
        """

    @abstractmethod
    def kill(self, job: JobSpec, force: bool = False) -> None:
        """Ask the system to stop the job (``force``: without a grace period). Killing a job that
        has already ended is not an error. The job's end is seen by a later status call, as
        ``killed`` unless it completed first.

        Acts only on what the engine recorded for the job (see "Kill safety" in the module
        docstring): a ``native_id`` the engine never recorded for ``job.job_dir`` is refused
        (logged, nothing signalled)."""

    def find(self, job: JobSpec) -> str | None:
        """The native id of the job if the system already has it (looked up by ``job.tag`` or the
        job directory), else None. Used after a crash between ``run`` and saving its result, so
        that a job is never submitted twice. Raises SystemUnavailable when it cannot tell."""
        return None

    def hold(self, job: JobSpec) -> None:
        """Hold a queued job (or suspend a running one). Optional."""
        raise NotImplementedError(f"{self.kind} systems cannot hold jobs")

    def release(self, job: JobSpec) -> None:
        """Release a held job (or resume a suspended one). Optional."""
        raise NotImplementedError(f"{self.kind} systems cannot release jobs")

    @property
    def status_interval(self) -> float:
        return float(self.options.get("status_interval") or self.default_status_interval)

    def wake_fileno(self) -> int | None:
        """A file descriptor that becomes readable when one of this system's jobs may have changed
        (Local: a job process exited), so that status can be asked at once; None if none."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most systems hold nothing
        """Release what the system holds (sessions, connections). Called once at actor exit."""

    def describe(self) -> str:
        return f"{self.name} ({self.kind})"


def _nothing() -> None:
    """The default :attr:`ExecutionSystem.before_waiting`."""


def host_name() -> str:
    """This host's name, as recorded on jobs of host-bound systems."""
    return os.uname().nodename
