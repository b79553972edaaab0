"""Command-line batch schedulers (Torque/PBS, Slurm): the template they share.

:class:`BatchSystem` owns what is the same for every scheduler driven through its commands:

* running a command: an argument list, never through a shell, with a timeout after which the
  command's whole process group is killed;
* telling a scheduler that cannot answer (timeout, command missing, "unable to contact the
  controller") from one that refuses a job: the first is :class:`SystemUnavailable` (transient,
  jobs are left alone), the second :class:`SubmissionRejected` with the scheduler's own words;
* submitting the job script, and looking the job up by its tag when a submission ended in doubt
  (a timeout may hide an accepted job: it must not be submitted twice);
* one status command per cycle for all the jobs of the system, never one per job; jobs the
  scheduler no longer lists are resolved from their exit-code files (:func:`ended_report`);
  what the status output says of how a listed job ended (its end state, exit status, usage:
  :meth:`BatchSystem.status_evidence`) becomes the report's ``reason`` and ``usage``;
* recording the native id at submission (``.execd/native_id``) and cancelling, holding or
  releasing only a job whose native id is that record, or which the scheduler lists under the
  job's tag (:meth:`BatchSystem.owns`): a forged job document never reaches another job;
* counting status calls (``status_calls``: calls of :meth:`get_statuses`; ``status_commands``:
  scheduler commands those calls ran).

A scheduler module only builds commands, parses their output (states, and the evidence of how
jobs ended: :mod:`~execution_engine.systems.accounting`) and holds a ``_STATE_MAP`` from its
native states to engine states. A native state missing from the map is reported as unknown for
now (the job is left alone) and logged, never taken for a success.

The exit-code file written by the job script is the truth about how a job ended: a scheduler's
"completed" only says that the job is over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from execution_engine.errors import ExecutionSystemError, SubmissionRejected, SystemUnavailable
from execution_engine.states import JobState
from execution_engine.systems import records
from execution_engine.systems.accounting import Evidence
from execution_engine.systems.base import (
    PID_NAME,
    ExecutionSystem,
    JobSpec,
    StatusReport,
    Submission,
    early_end_report,
    ended_report,
)

log = logging.getLogger(__name__)

RUNUSER = "/usr/sbin/runuser"
"""Runs a submission command as the job's account (util-linux)."""

#: Words in a failed command's output that mean "the scheduler cannot answer now" rather than
#: "the scheduler refuses". Compared in lower case.
TRANSIENT_MARKERS: tuple[str, ...] = (
    "unable to contact",
    "connect failure",
    "connection refused",
    "connection reset",
    "cannot connect",
    "could not connect",
    "timed out",
    "temporarily",
    "try again",
    "not responding",
    "no free connections",
    "unable to send message",
    "communication error",
    "commlib error",
    "no route to host",
    "socket",
    "zero bytes were transmitted",
)

#: A queue, partition or parallel environment name: one word that cannot pass for an option (nor
#: break a wrapper that hands it to a shell).
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.@*+,][A-Za-z0-9_.@*+,-]*\Z")

#: Prefix of the native id :meth:`ExecutionSystem.find` gives a job that ran but that the
#: scheduler has already forgotten (it ended before its submission was recorded).
FORGOTTEN_PREFIX = "forgotten:"


# ---------------------------------------------------------------------- commands
@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams, stripped, for messages."""
        return "\n".join(part for part in (self.stdout.strip(), self.stderr.strip()) if part)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        return (f"`{shlex.join(self.argv)}` exited with status {self.returncode}: "
                f"{self.output or '(no output)'}")


def run_command(
    argv: Sequence[str],
    *,
    system: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell), stdin from /dev/null, and return its status and output.

    The command runs in a session of its own: when it exceeds ``timeout`` seconds its whole
    process group is killed (wrappers such as Torque's ``qsub`` start ``sbatch`` in turn).
    Raises SystemUnavailable naming ``system`` when the command cannot be started or times out.
    """
    command = tuple(argv)
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise SystemUnavailable(system, f"cannot run {command[0]}: {exc.strerror or exc}") from exc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        raise SystemUnavailable(
            system, f"`{shlex.join(command)}` did not answer within {timeout:g} s") from None
    log.debug("%s: `%s` -> %s", system, shlex.join(command), proc.returncode)
    return CommandResult(command, proc.returncode, stdout, stderr)


def as_account(system: str, job: JobSpec, argv: list[str]) -> list[str]:
    """``argv`` run as the job's account, so that the scheduler records the account as the
    job's user (``runuser``, which only root may use, keeps the environment but HOME, SHELL,
    USER and LOGNAME, which become the account's); as is without an account. Status, kills
    and holds stay the daemon's: root (a scheduler operator or manager) may act on any user's
    job. Raises SubmissionRejected naming ``system`` when this process is not root."""
    account = job.account
    if account is None:
        return argv
    if os.geteuid() != 0:
        raise SubmissionRejected(system, f"cannot submit as account {account.name}: only a "
                                         "daemon running as root can")
    return [RUNUSER, "-u", account.name, "--", *argv]


def looks_transient(text: str, extra: Iterable[str] = ()) -> bool:
    """True when a failed command's output says the scheduler cannot answer now."""
    lowered = text.lower()
    return any(marker in lowered for marker in (*TRANSIENT_MARKERS, *extra))


def check_name(system: str, what: str, value: str) -> str:
    """``value`` if it is a plain scheduler name, else SubmissionRejected."""
    if not _PLAIN_NAME.match(value):
        raise SubmissionRejected(system, f"invalid {what} name {value!r}")
    return value


# ---------------------------------------------------------------------- forgotten jobs
def job_has_started(job: JobSpec) -> bool:
    """True when the job script has run (it records its pid first thing, its exit code last)."""
    return (job.job_dir / PID_NAME).exists() or job.exit_code_file.exists()


def forgotten_id(job: JobSpec) -> str:
    """The native id of a job that ran but is no longer known to its scheduler."""
    return f"{FORGOTTEN_PREFIX}{job.tag}"


def is_forgotten_id(native_id: str) -> bool:
    return native_id.startswith(FORGOTTEN_PREFIX)


def forgotten_report(job: JobSpec) -> StatusReport:
    return ended_report(job, "(it ended before its submission was recorded)")


# ---------------------------------------------------------------------- the template
class BatchSystem(ExecutionSystem):
    """An execution system driven through a batch scheduler's commands.

    Subclasses provide the command builders (``submit_command``, ``status_command``,
    ``kill_command``, ``find_command`` and optionally ``hold_commands``/``release_commands``), the
    parsers (``parse_submit_output``, ``parse_status_output``, ``parse_find_output``) and
    ``_STATE_MAP``. Everything else, including the error contract, is done here.
    """

    #: Native state -> engine state. An ended engine state means "the job is over": its
    #: exit-code file then says how (:func:`ended_report`), except that ``killed`` (cancelled by
    #: an operator or the scheduler) is reported killed unless the job completed. ``None`` means
    #: "unknown for now". A state missing from the map is logged and reported unknown.
    _STATE_MAP: ClassVar[Mapping[str, JobState | None]] = {}
    #: The scheduler's name in messages.
    scheduler: ClassVar[str] = "scheduler"
    #: Words, besides :data:`TRANSIENT_MARKERS`, meaning this scheduler cannot answer now.
    transient_markers: ClassVar[tuple[str, ...]] = ()

    default_status_interval: ClassVar[float] = 2.0
    option_spec: ClassVar[Mapping[str, str]] = {
        "bin_dir": 'string(default="")',
        "queue": 'string(default="")',
        "submit_options": 'string(default="")',
        "command_timeout": "float(min=1, max=3600, default=60)",
    }
    """``bin_dir``: folder of the scheduler's commands ("" = found on PATH). ``queue``: default
    queue/partition of jobs that name none. ``submit_options``: extra arguments of the submit
    command, split like a shell would (never run through one). ``command_timeout``: seconds after
    which a scheduler command counts as "the scheduler does not answer"."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.bin_dir = str(self.options.get("bin_dir") or "")
        self.queue = str(self.options.get("queue") or "")
        self.submit_options = shlex.split(str(self.options.get("submit_options") or ""))
        self.command_timeout = float(self.options.get("command_timeout") or 60)
        #: Calls of :meth:`get_statuses` (one per status cycle, whatever the number of jobs).
        self.status_calls = 0
        #: Scheduler commands run by those calls.
        self.status_commands = 0
        self._unknown_states_logged: set[str] = set()

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def submit_command(self, job: JobSpec) -> list[str]:
        """The command that submits ``job.script`` under the name ``job.tag``, its output and
        error into ``job.scheduler_log``, in ``job.job_dir``."""

    @abstractmethod
    def parse_submit_output(self, stdout: str) -> str | None:
        """The native id printed by a successful submit command, or None if there is none."""

    @abstractmethod
    def status_command(self, native_ids: Sequence[str]) -> list[str]:
        """One command asking the state of all ``native_ids``."""

    @abstractmethod
    def parse_status_output(self, stdout: str) -> dict[str, str]:
        """Native id -> native state, for every job the status command listed."""

    @abstractmethod
    def kill_command(self, native_id: str, force: bool) -> list[str]:
        """The command that cancels a job."""

    @abstractmethod
    def find_command(self, job: JobSpec) -> list[str]:
        """A command listing the jobs named ``job.tag`` (``parse_find_output`` picks it)."""

    @abstractmethod
    def parse_find_output(self, stdout: str, job: JobSpec) -> str | None:
        """The native id of the job named ``job.tag`` in the find command's output."""

    def status_evidence(self, stdout: str) -> Mapping[str, Evidence]:
        """Listed id -> what the status command's output says of how that job ended (why, what
        it used), used for the jobs it shows over. Default: nothing."""
        return {}

    def status_ok(self, result: CommandResult) -> bool:
        """True when a status command's result can be trusted (default: exit status 0)."""
        return result.ok

    def find_ok(self, result: CommandResult) -> bool:
        """True when a find command's result can be trusted (default: exit status 0)."""
        return result.ok

    def engine_state(self, native_state: str, native_id: str) -> JobState | None:
        """The engine state of a native state, from ``_STATE_MAP``; None when unknown."""
        if native_state in self._STATE_MAP:
            return self._STATE_MAP[native_state]
        if native_state not in self._unknown_states_logged:
            self._unknown_states_logged.add(native_state)
            log.warning("%s: unknown %s state %r (job %s): reported as unknown", self.name,
                        self.scheduler, native_state, native_id)
        return None

    def same_job(self, listed_id: str, native_id: str) -> bool:
        """True when the status output's ``listed_id`` is the job submitted as ``native_id``."""
        return listed_id == native_id

    def resolve_missing(self, jobs: Sequence[JobSpec]) -> dict[str, StatusReport]:
        """Reports for jobs the status command no longer lists: ended, from their exit-code files.
        Subclasses may ask the scheduler's accounting for a better message."""
        return {job.job_id: ended_report(job, f"(no longer known to {self.scheduler})")
                for job in jobs}

    def find_in_accounting(self, job: JobSpec) -> str | None:
        """The native id of a finished job named ``job.tag`` from the scheduler's accounting,
        if it has one. Default: none."""
        return None

    def hold_commands(self, native_id: str) -> list[list[str]]:
        """Commands that hold (or suspend) a job, tried in order; [] = holding unsupported."""
        return []

    def release_commands(self, native_id: str) -> list[list[str]]:
        """Commands that release (or resume) a job, tried in order; [] = unsupported."""
        return []

    # ------------------------------------------------------------------ helpers
    def command(self, name: str) -> str:
        """The path of a scheduler command: in ``bin_dir`` when set, else looked up on PATH."""
        return str(Path(self.bin_dir) / name) if self.bin_dir else name

    def execute(self, argv: Sequence[str]) -> CommandResult:
        """Run a scheduler command with the system's timeout; raises SystemUnavailable."""
        return run_command(argv, system=self.name, timeout=self.command_timeout)

    def is_transient(self, result: CommandResult) -> bool:
        return looks_transient(result.output, self.transient_markers)

    def unavailable(self, result: CommandResult) -> SystemUnavailable:
        return SystemUnavailable(self.name, result.describe())

    # ------------------------------------------------------------------ run
    def run(self, job: JobSpec) -> Submission:
        """Submit the job script. A refusal raises SubmissionRejected with the scheduler's
        message; a scheduler that cannot answer raises SystemUnavailable, after checking (by
        the job's tag) that the submission did not get through anyway."""
        if not job.script.is_file():
            raise SubmissionRejected(self.name, f"job script {job.script} is missing")
        try:
            result = self.execute(as_account(self.name, job, self.submit_command(job)))
        except SystemUnavailable:
            native_id = self._find_after_doubt(job)
            if native_id is not None:
                return self._submitted(job, native_id)
            raise
        if not result.ok:
            if self.is_transient(result):
                raise self.unavailable(result)
            said = result.output or result.describe()
            raise SubmissionRejected(self.name, f"{self.scheduler} refused the job: {said}")
        native_id = self.parse_submit_output(result.stdout)
        if native_id is None:
            native_id = self._find_after_doubt(job)
            if native_id is None:
                raise SystemUnavailable(
                    self.name, f"no job id in the output of {result.describe()}")
        return self._submitted(job, native_id)

    def _submitted(self, job: JobSpec, native_id: str) -> Submission:
        """The submission of ``job`` as ``native_id``, recorded in its job directory."""
        if not is_forgotten_id(native_id):
            records.record_native_id(job.job_dir, native_id)
        return Submission(native_id)

    def _find_after_doubt(self, job: JobSpec) -> str | None:
        try:
            native_id = self.find(job)
        except SystemUnavailable:
            return None
        if native_id is not None:
            log.warning("%s: the submission of job %s ended in doubt but the scheduler has it "
                        "as %s", self.name, job.job_id, native_id)
        return native_id

    # ------------------------------------------------------------------ status
    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        """One status command for all jobs; jobs it does not list are resolved from their
        exit-code files. Raises SystemUnavailable when the scheduler cannot be asked."""
        self.status_calls += 1
        reports: dict[str, StatusReport] = {}
        asked: list[tuple[JobSpec, str]] = []
        for job in jobs:
            if job.native_id is None:
                continue
            if is_forgotten_id(job.native_id):
                reports[job.job_id] = forgotten_report(job)
            else:
                asked.append((job, job.native_id))
        if not asked:
            return reports
        native_ids = list(dict.fromkeys(native_id for _, native_id in asked))
        self.status_commands += 1
        result = self.execute(self.status_command(native_ids))
        if not self.status_ok(result):
            raise self.unavailable(result)
        listed = self.parse_status_output(result.stdout)
        evidence = self.status_evidence(result.stdout)
        missing: list[JobSpec] = []
        for job, native_id in asked:
            listed_id = self._lookup(listed, native_id)
            if listed_id is None:
                missing.append(job)
            else:
                reports[job.job_id] = self._report(job, native_id, listed[listed_id],
                                                   evidence.get(listed_id))
        if missing:
            reports.update(self.resolve_missing(missing))
        return reports

    def _lookup(self, listed: Mapping[str, str], native_id: str) -> str | None:
        """The id under which the status output lists ``native_id``, or None."""
        if native_id in listed:
            return native_id
        for listed_id in listed:
            if self.same_job(listed_id, native_id):
                return listed_id
        return None

    def _report(self, job: JobSpec, native_id: str, native_state: str,
                evidence: Evidence | None = None) -> StatusReport:
        state = self.engine_state(native_state, native_id)
        if state is not None and state.is_ended:
            evidence = evidence or Evidence()
            said = " ".join(part for part in (f"({self.scheduler} state {native_state})",
                                              evidence.said) if part)
            # A state that says only "over" (Torque's C) with words of how: they count.
            told = JobState.ERROR if state is JobState.FINISHED and evidence.said else state
            return ended_report(job, said, told, reason=evidence.reason,
                                usage=evidence.usage)
        # The script has recorded its end; the scheduler not yet. Of what the scheduler says
        # of a job it still runs, only the node holds (an end time would be a forecast).
        seen = evidence.usage if evidence is not None else None
        early = early_end_report(job, seen.node if seen is not None else None)
        if early is not None:
            return early
        if state is None:
            return StatusReport(None, message=f"unknown {self.scheduler} state {native_state!r}")
        return StatusReport(state)

    # ------------------------------------------------------------------ kill, hold, release
    def owns(self, job: JobSpec, action: str) -> bool:
        """True when ``job.native_id`` is the engine's own job: the id recorded at submission in
        ``job.job_dir``, or a job the scheduler lists under ``job.tag``. Otherwise logs that
        ``action`` is refused. Raises SystemUnavailable when the scheduler cannot tell."""
        native_id = job.native_id
        if native_id is None or is_forgotten_id(native_id):
            return False
        recorded = records.recorded_native_id(job.job_dir)
        if recorded is not None and self.same_job(recorded, native_id):
            return True
        result = self.execute(self.find_command(job))
        if not self.find_ok(result):
            raise self.unavailable(result)
        found = self.parse_find_output(result.stdout, job)
        if found is not None and self.same_job(found, native_id):
            return True
        log.warning("%s: refusing to %s job %s: %s is not the id the engine recorded for it "
                    "(%s) nor a %s job named %s", self.name, action, job.job_id, native_id,
                    recorded or "none", self.scheduler, job.tag)
        return False

    def kill(self, job: JobSpec, force: bool = False) -> None:
        """Cancel the job, if it is the engine's (:meth:`owns`). A job the scheduler no longer
        has is not an error."""
        if job.native_id is None or not self.owns(job, "kill"):
            return
        records.record_kill(job.job_dir, job.native_id,
                            f"{'forced ' if force else ''}cancellation by {self.scheduler}")
        result = self.execute(self.kill_command(job.native_id, force))
        if result.ok:
            return
        if self.is_transient(result):
            raise self.unavailable(result)
        log.info("%s: cancelling job %s (%s) did nothing, it has probably ended: %s",
                 self.name, job.job_id, job.native_id, result.output or result.returncode)

    def hold(self, job: JobSpec) -> None:
        self._control(job, "hold", self.hold_commands)

    def release(self, job: JobSpec) -> None:
        self._control(job, "release", self.release_commands)

    def _control(self, job: JobSpec, action: str,
                 commands_for: Callable[[str], list[list[str]]]) -> None:
        """Run the ``action`` commands in order, on the engine's own job (:meth:`owns`) only;
        done when at least one succeeds."""
        if job.native_id is None or not self.owns(job, action):
            return
        commands = commands_for(job.native_id)
        if not commands:
            raise NotImplementedError(f"{self.kind} systems cannot {action} jobs")
        failures = []
        for argv in commands:
            result = self.execute(argv)
            if result.ok:
                continue
            if self.is_transient(result):
                raise self.unavailable(result)
            failures.append(result)
        if len(failures) == len(commands):
            raise ExecutionSystemError(
                self.name, f"cannot {action} job {job.job_id} ({job.native_id}): "
                + "; ".join(r.output or r.describe() for r in failures))

    # ------------------------------------------------------------------ find
    def find(self, job: JobSpec) -> str | None:
        """The job's native id looked up by its tag: in the scheduler's list, then in its
        accounting; a job that ran and is known to neither gets a "forgotten" id (status
        then comes from its exit-code file) so that it is never submitted again."""
        result = self.execute(self.find_command(job))
        if not self.find_ok(result):
            raise self.unavailable(result)
        native_id = self.parse_find_output(result.stdout, job)
        if native_id is None:
            native_id = self.find_in_accounting(job)
        if native_id is None and job_has_started(job):
            native_id = forgotten_id(job)
        return native_id


__all__ = [
    "FORGOTTEN_PREFIX",
    "TRANSIENT_MARKERS",
    "BatchSystem",
    "CommandResult",
    "check_name",
    "forgotten_id",
    "forgotten_report",
    "is_forgotten_id",
    "job_has_started",
    "looks_transient",
    "run_command",
]
