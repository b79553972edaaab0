"""Execution systems driven through a DRMAA 1.0 library (Grid Engine's libdrmaa, pbs-drmaa).

The Python binding (PyPI ``drmaa``) loads the C library when it is imported, so it is imported
only when a system first needs its session, never when this module is: the master process, the
configuration check and the other systems never load libdrmaa.

Loading the library has two conditions that only the process's start can meet:

* Grid Engine's libdrmaa links libjemalloc, whose thread-local storage must fit in the static
  TLS block glibc reserves at start-up: a process not *started* with
  ``GLIBC_TUNABLES=glibc.rtld.optional_static_tls=16384`` fails with "cannot allocate memory in
  static TLS block". :func:`drmaa_process_environment` gives the variables (with
  ``DRMAA_LIBRARY_PATH``, ``SGE_ROOT``, ``SGE_CELL``) that the engine sets on the actor processes
  it spawns (:meth:`ExecutionSystem.process_environment`).
* A DRMAA library holds one session per process: a second ``drmaa_init`` fails. The session is
  therefore owned by the process (:class:`ProcessSession`), not by a system instance: every DRMAA
  system instance of a process borrows it, the last one to close ends it. A forked child must
  not use its parent's session (the library's threads did not survive the fork); the engine
  spawns its actors, which open their own.

What a session can see, measured with Grid Engine 8.1.9: ``jobStatus`` answers for any job of
the cell, including jobs submitted by another session or process (so a Status actor, or a daemon
restarted with a new session, tracks jobs a Submit actor submitted); once a job has ended it
stays visible ("done"/"failed") only to the session that submitted it, until that session reaps
it; to any other session it is unknown (``InvalidJobException``). Either way the exit-code file
says how the job ended (``done`` is also what Grid Engine says for ``exit 3``).

Why a job ended: a job the status pass sees "done"/"failed" (this session submitted it) is
waited for at once, and its ``JobInfo`` (signal, ``wasAborted``, resource usage) is the evidence
(:func:`~execution_engine.systems.accounting.job_end_evidence`, judged against the job's
requested walltime and memory). A scheduler module may add its own evidence for every job that
ended in the pass (:meth:`DrmaaSystem.ended_evidence`; Grid Engine: its accounting file).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from execution_engine.errors import ExecutionSystemError, SubmissionRejected, SystemUnavailable
from execution_engine.states import JobState
from execution_engine.systems import records
from execution_engine.systems.accounting import (
    Evidence,
    JobEndRecord,
    job_end_evidence,
    record_from_job_info,
)
from execution_engine.systems.base import (
    ExecutionSystem,
    JobSpec,
    StatusReport,
    Submission,
    early_end_report,
    ended_report,
)
from execution_engine.systems.batch import forgotten_report, is_forgotten_id

log = logging.getLogger(__name__)

#: Reserve enough static TLS for libjemalloc (linked by Grid Engine's libdrmaa).
STATIC_TLS_TUNABLE = "glibc.rtld.optional_static_tls=16384"

#: Options of a DRMAA system -> the variables the library reads from the environment.
_OPTION_VARIABLES = (
    ("library", "DRMAA_LIBRARY_PATH"),
    ("sge_root", "SGE_ROOT"),
    ("sge_cell", "SGE_CELL"),
)

_ENDED = JobState.FINISHED  # "over": the exit-code file says how

#: DRMAA job states (python ``drmaa.JobState`` values) -> engine states.
DRMAA_STATES: Mapping[str, JobState | None] = {
    "undetermined": None,
    "queued_active": JobState.PENDING,
    "system_on_hold": JobState.HOLD,
    "user_on_hold": JobState.HOLD,
    "user_system_on_hold": JobState.HOLD,
    "running": JobState.RUNNING,
    "system_suspended": JobState.HOLD,
    "user_suspended": JobState.HOLD,
    "user_system_suspended": JobState.HOLD,
    "done": _ENDED,
    "failed": JobState.ERROR,
}
_SUSPENDED = frozenset({"system_suspended", "user_suspended", "user_system_suspended"})


@dataclass(frozen=True)
class EndedJob:
    """A job the status pass found over: the state DRMAA said (None: no longer known to this
    session) and its ``JobInfo``, when this session could wait for it."""

    job: JobSpec
    native_state: str | None = None
    info: JobEndRecord | None = None


def drmaa_process_environment(options: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables a process must be *started* with to use DRMAA.

    ``GLIBC_TUNABLES`` (the current value plus the static TLS reservation), then
    ``DRMAA_LIBRARY_PATH``, ``SGE_ROOT`` and ``SGE_CELL`` from the options ``library``,
    ``sge_root`` and ``sge_cell`` or, when not set there, from this process's environment.
    Loads nothing.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "optional_static_tls" not in tunables:
        tunables = f"{tunables}:{STATIC_TLS_TUNABLE}" if tunables else STATIC_TLS_TUNABLE
    env = {"GLIBC_TUNABLES": tunables}
    for key, variable in _OPTION_VARIABLES:
        value = str(options.get(key) or "") or os.environ.get(variable, "")
        if value:
            env[variable] = value
    return env


def _static_tls_reserved() -> bool:
    return ("optional_static_tls" in os.environ.get("GLIBC_TUNABLES", "")
            or "libjemalloc" in os.environ.get("LD_PRELOAD", ""))


def load_drmaa(library: str, system: str) -> ModuleType:
    """Import the ``drmaa`` binding (which loads ``library``, else $DRMAA_LIBRARY_PATH).

    Raises SystemUnavailable saying why the library cannot be loaded in this process.
    """
    loaded = sys.modules.get("drmaa")
    if loaded is not None:
        current = os.environ.get("DRMAA_LIBRARY_PATH", "")
        if library and current and os.path.realpath(library) != os.path.realpath(current):
            raise SystemUnavailable(system, f"this process already loaded the DRMAA library "
                                            f"{current}; it cannot load {library} as well")
        return loaded
    if library:
        os.environ["DRMAA_LIBRARY_PATH"] = library  # the binding reads it when imported
    try:
        import drmaa
    except (ImportError, OSError, RuntimeError) as exc:
        hint = ""
        if "static TLS" in str(exc) or not _static_tls_reserved():
            hint = (f" (the process must be started with GLIBC_TUNABLES={STATIC_TLS_TUNABLE}: "
                    "see drmaa_process_environment)")
        where = library or os.environ.get("DRMAA_LIBRARY_PATH") or "(DRMAA_LIBRARY_PATH unset)"
        raise SystemUnavailable(system, f"cannot load the DRMAA library {where}: {exc}{hint}"
                                ) from exc
    return drmaa


class ProcessSession:
    """The DRMAA session of this process, shared by every DRMAA system instance in it.

    Why a process-wide holder rather than a session per instance: the DRMAA library allows one
    session per process (``drmaa_init`` twice fails with AlreadyActiveSession), and a process may
    hold several DRMAA system instances (two sections of the config, or a re-created instance
    after a reload). Instances borrow the session with :meth:`acquire` and give it back with
    :meth:`release`; the session is opened at the first acquire and ended (``drmaa_exit``) at
    the last release, so a later acquire opens a fresh one. The session belongs to the process
    that opened it: after a fork it is refused, never shared.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: Any = None
        self._library = ""
        self._pid = 0
        self._users = 0

    def acquire(self, library: str, system: str) -> Any:
        """The open session (opening it if needed); raises SystemUnavailable."""
        with self._lock:
            if self._session is not None and self._pid != os.getpid():
                raise SystemUnavailable(system, "the DRMAA session belongs to the parent "
                                        "process; a DRMAA system must be used in a process "
                                        "started (spawned), not forked, after it")
            if self._session is None:
                drmaa = load_drmaa(library, system)
                session = drmaa.Session()
                try:
                    session.initialize()
                except drmaa.errors.DrmaaException as exc:
                    raise SystemUnavailable(system, f"cannot open a DRMAA session: "
                                            f"{drmaa_message(exc)}") from exc
                self._session, self._library, self._pid = session, library, os.getpid()
                log.info("%s: DRMAA session %s opened (%s)", system, session.contact,
                         session.drmaaImplementation)
            self._users += 1
            return self._session

    def release(self) -> None:
        """Give the session back; the last user ends it."""
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                return
            self._users -= 1
            if self._users > 0:
                return
            session, self._session, self._users = self._session, None, 0
            try:
                session.exit()
            except Exception as exc:  # a session that cannot say goodbye is gone all the same
                log.warning("DRMAA session exit failed: %s", exc)


#: The one session holder of this process (created empty: nothing is loaded until used).
PROCESS_SESSION = ProcessSession()

_CODE_PREFIX = re.compile(r"^code \d+: ")


def drmaa_message(exc: BaseException) -> str:
    """A DRMAA error's own message, without the binding's ``code N:`` prefix."""
    return _CODE_PREFIX.sub("", str(exc)).strip()


class DrmaaSystem(ExecutionSystem):
    """An execution system reached through a DRMAA 1.0 library.

    Jobs run as ``/bin/sh <job script>`` in the job directory, named ``job.tag``, stdout and
    stderr joined into ``job.scheduler_log``; the job's requirements become the DRMAA native
    specification (:meth:`resource_arguments`, per scheduler), followed by the option
    ``native_specification``. Status is one pass of ``jobStatus`` over all jobs per cycle (DRMAA
    has no bulk status call; the pass is local to the session's connection and counts as one
    status call in ``status_calls``).

    Kill safety: the native id is recorded in the job directory at submission; ``kill``,
    ``hold`` and ``release`` act only on that id, or on the job :meth:`find` locates by its tag
    (:meth:`owns`).

    Errors: a refusal by the scheduler (DeniedByDrm, invalid or conflicting attributes) is
    SubmissionRejected with its message; a scheduler that cannot be reached (DrmCommunication,
    TryLater, a session that cannot be opened or a library that cannot be loaded) is
    SystemUnavailable. DRMAA calls block: they have no timeout of ours.
    """

    default_status_interval: ClassVar[float] = 2.0
    option_spec: ClassVar[Mapping[str, str]] = {
        "library": 'string(default="")',
        "native_specification": 'string(default="")',
        "queue": 'string(default="")',
    }
    """``library``: path of the DRMAA library ("" = $DRMAA_LIBRARY_PATH). ``native_specification``:
    scheduler options added to every job's. ``queue``: queue of jobs that name none."""

    _STATE_MAP: ClassVar[Mapping[str, JobState | None]] = DRMAA_STATES
    #: The scheduler's name in messages.
    scheduler: ClassVar[str] = "the DRM"

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.library = str(self.options.get("library") or "")
        self.queue = str(self.options.get("queue") or "")
        self.extra_native_specification = str(self.options.get("native_specification") or "")
        #: Calls of :meth:`get_statuses` (one pass over all jobs each).
        self.status_calls = 0
        self._handle: tuple[Any, ModuleType] | None = None

    @classmethod
    def process_environment(cls, options: Mapping[str, Any]) -> dict[str, str]:
        return drmaa_process_environment(options)

    # ------------------------------------------------------------------ scheduler hooks
    def resource_arguments(self, job: JobSpec) -> list[str]:
        """Native-specification arguments for the job's requirements (queue included)."""
        return []

    def native_specification(self, job: JobSpec) -> str:
        args = " ".join(self.resource_arguments(job))
        return " ".join(part for part in (args, self.extra_native_specification) if part)

    # ------------------------------------------------------------------ session
    def session(self) -> tuple[Any, ModuleType]:
        """This process's DRMAA session and the binding module, opened on first use."""
        if self._handle is None:
            for key, variable in _OPTION_VARIABLES[1:]:
                value = str(self.options.get(key) or "")
                if value:
                    os.environ[variable] = value  # read by drmaa_init
            session = PROCESS_SESSION.acquire(self.library, self.name)
            self._handle = (session, load_drmaa(self.library, self.name))
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle = None
            PROCESS_SESSION.release()

    def _unavailable(self, exc: Exception) -> SystemUnavailable:
        return SystemUnavailable(self.name, drmaa_message(exc))

    # ------------------------------------------------------------------ run
    def run(self, job: JobSpec) -> Submission:
        if not job.script.is_file():
            raise SubmissionRejected(self.name, f"job script {job.script} is missing")
        if job.account is not None:  # DRMAA submits as the session's user, and has no switch
            raise SubmissionRejected(self.name, f"cannot submit as account {job.account.name}: "
                                                "DRMAA submits as the daemon's own user (a "
                                                "subclass submits such jobs otherwise, as "
                                                "Grid Engine's does with qsub)")
        session, drmaa = self.session()
        errors = drmaa.errors
        template = session.createJobTemplate()
        try:
            template.remoteCommand = "/bin/sh"
            template.args = [str(job.script)]
            template.workingDirectory = str(job.job_dir)
            template.jobName = job.tag
            template.outputPath = f":{job.scheduler_log}"
            template.errorPath = f":{job.scheduler_log}"
            template.joinFiles = True
            spec = self.native_specification(job)
            if spec:
                template.nativeSpecification = spec
            native_id = session.runJob(template)
        except (errors.DeniedByDrmException, errors.InvalidAttributeValueException,
                errors.InvalidAttributeFormatException, errors.ConflictingAttributeValuesException,
                errors.InvalidArgumentException, errors.UnsupportedAttributeException) as exc:
            raise SubmissionRejected(
                self.name, f"{self.scheduler} refused the job: {drmaa_message(exc)}") from exc
        except errors.DrmaaException as exc:
            raise self._unavailable(exc) from exc
        finally:
            try:
                session.deleteJobTemplate(template)
            except errors.DrmaaException as exc:
                log.debug("%s: deleteJobTemplate: %s", self.name, exc)
        self._reap(session, drmaa)
        records.record_native_id(job.job_dir, str(native_id))
        return Submission(str(native_id))

    def _reap(self, session: Any, drmaa: ModuleType) -> None:
        """Forget this session's ended jobs (the library keeps each until it is waited for)."""
        for _ in range(1000):
            try:
                session.wait(drmaa.Session.JOB_IDS_SESSION_ANY, drmaa.Session.TIMEOUT_NO_WAIT)
            except drmaa.errors.DrmaaException:  # ExitTimeout: none ended; InvalidJob: no jobs
                return
            except Exception as exc:  # code 24 (reaped, without usage): a plain Exception
                log.debug("%s: reaping: %s", self.name, exc)

    # ------------------------------------------------------------------ status
    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        """One ``jobStatus`` pass over all jobs. A job the session cannot see any more has ended:
        its exit-code file says how, the evidence (:meth:`ended_evidence`) why. Raises
        SystemUnavailable when the DRM cannot be reached."""
        self.status_calls += 1
        session, drmaa = self.session()
        errors = drmaa.errors
        reports: dict[str, StatusReport] = {}
        ended: list[EndedJob] = []
        for job in jobs:
            if job.native_id is None:
                continue
            if is_forgotten_id(job.native_id):
                reports[job.job_id] = forgotten_report(job)
                continue
            try:
                native_state = str(session.jobStatus(job.native_id))
            except (errors.InvalidJobException, errors.InvalidArgumentException):
                ended.append(EndedJob(job))
                continue
            except errors.DrmaaException as exc:
                raise self._unavailable(exc) from exc
            if self._is_over(native_state):
                ended.append(EndedJob(job, native_state,
                                      self._job_info(session, drmaa, job.native_id)))
            else:
                reports[job.job_id] = self._report(job, job.native_id, native_state)
        if ended:
            reports.update(self._ended_reports(ended))
        if any(end.native_state is not None for end in ended):
            self._reap(session, drmaa)
        return reports

    def _is_over(self, native_state: str) -> bool:
        state = self._STATE_MAP.get(native_state)
        return state is not None and state.is_ended

    def _job_info(self, session: Any, drmaa: ModuleType, native_id: str) -> JobEndRecord | None:
        """The ``JobInfo`` of an ended job of this session (waiting for it reaps it), or None
        when the library has none for it."""
        try:
            info = session.wait(native_id, drmaa.Session.TIMEOUT_NO_WAIT)
        except Exception as exc:  # reaped already, or code 24 (no usage): a plain Exception
            log.debug("%s: no JobInfo for %s: %s", self.name, native_id, exc)
            return None
        return record_from_job_info(info)

    def ended_evidence(self, ended: Sequence[EndedJob]) -> dict[str, Evidence]:
        """Job id -> the evidence of how each ended job ended. Here: its ``JobInfo``, for the
        jobs this session waited for. An :data:`~execution_engine.systems.accounting.AWAITED`
        evidence keeps the job unknown for now (its evidence is still to be written)."""
        return {end.job.job_id: job_end_evidence(end.info, end.job.resources, source="DRMAA",
                                                 memory_enforced=self.memory_enforced)
                for end in ended if end.info is not None}

    @property
    def memory_enforced(self) -> bool:
        """True when the scheduler kills a job that exceeds the memory it requested."""
        return True

    def _ended_reports(self, ended: Sequence[EndedJob]) -> dict[str, StatusReport]:
        evidence = self.ended_evidence(ended)
        reports = {}
        for end in ended:
            found = evidence.get(end.job.job_id, Evidence())
            if found.awaited:
                reports[end.job.job_id] = StatusReport(
                    None, message=f"ended; awaiting the {self.scheduler} accounting")
                continue
            if end.native_state is None:
                said, state = f"(no longer known to {self.scheduler})", None
            else:
                said, state = f"(DRMAA state {end.native_state})", self._STATE_MAP[end.native_state]
            if found.said and state in (None, JobState.FINISHED):
                state = JobState.ERROR  # the evidence says more than "over": it counts
            said = " ".join(part for part in (said, found.said) if part)
            reports[end.job.job_id] = ended_report(end.job, said, state, reason=found.reason,
                                                   usage=found.usage)
        return reports

    def _report(self, job: JobSpec, native_id: str, native_state: str) -> StatusReport:
        """The report of a job DRMAA shows queued, running or held."""
        if native_state not in self._STATE_MAP:
            log.warning("%s: unknown DRMAA state %r of job %s: reported as unknown", self.name,
                        native_state, native_id)
            return StatusReport(None, message=f"unknown DRMAA state {native_state!r}")
        state = self._STATE_MAP[native_state]
        early = early_end_report(job)  # the script recorded its end before the DRM noticed
        if early is not None:
            return early
        if state is None:
            return StatusReport(None, message=f"DRMAA state {native_state}")
        return StatusReport(state)

    # ------------------------------------------------------------------ control
    def owns(self, job: JobSpec, action: str) -> bool:
        """True when ``job.native_id`` is the engine's own job: the id recorded at submission in
        ``job.job_dir``, or the one :meth:`find` locates by the job's tag. Otherwise logs that
        ``action`` is refused. Raises SystemUnavailable when the scheduler cannot tell."""
        native_id = job.native_id
        if native_id is None or is_forgotten_id(native_id):
            return False
        recorded = records.recorded_native_id(job.job_dir)
        if recorded == native_id or (recorded is None and self.find(job) == native_id):
            return True
        log.warning("%s: refusing to %s job %s: %s is not the id the engine recorded for it "
                    "(%s) nor a %s job named %s", self.name, action, job.job_id, native_id,
                    recorded or "none", self.scheduler, job.tag)
        return False

    def kill(self, job: JobSpec, force: bool = False) -> None:
        """TERMINATE the job (DRMAA has no gentler or harder kill: ``force`` changes nothing),
        if it is the engine's (:meth:`owns`). A job the DRM no longer has is not an error."""
        if job.native_id is None or not self.owns(job, "kill"):
            return
        records.record_kill(job.job_dir, job.native_id, f"terminated through {self.scheduler}")
        session, drmaa = self.session()
        try:
            session.control(job.native_id, drmaa.JobControlAction.TERMINATE)
        except drmaa.errors.InvalidJobException as exc:
            log.info("%s: job %s (%s) already gone: %s", self.name, job.job_id, job.native_id,
                     drmaa_message(exc))
        except drmaa.errors.DrmCommunicationException as exc:
            raise self._unavailable(exc) from exc
        except drmaa.errors.DrmaaException as exc:
            raise ExecutionSystemError(
                self.name, f"cannot kill job {job.job_id} ({job.native_id}): "
                f"{drmaa_message(exc)}") from exc

    def hold(self, job: JobSpec) -> None:
        """HOLD a queued job, SUSPEND a running one."""
        self._control(job, hold=True)

    def release(self, job: JobSpec) -> None:
        """RELEASE a held job, RESUME a suspended one."""
        self._control(job, hold=False)

    def _control(self, job: JobSpec, hold: bool) -> None:
        if job.native_id is None or not self.owns(job, "hold" if hold else "release"):
            return
        session, drmaa = self.session()
        actions = drmaa.JobControlAction
        try:
            native_state = str(session.jobStatus(job.native_id))
            if hold:
                action = actions.SUSPEND if native_state == "running" else actions.HOLD
            else:
                action = actions.RESUME if native_state in _SUSPENDED else actions.RELEASE
            session.control(job.native_id, action)
        except drmaa.errors.InvalidJobException as exc:
            log.info("%s: job %s (%s) already gone: %s", self.name, job.job_id, job.native_id,
                     drmaa_message(exc))
        except drmaa.errors.DrmCommunicationException as exc:
            raise self._unavailable(exc) from exc
        except drmaa.errors.DrmaaException as exc:
            what = "hold" if hold else "release"
            raise ExecutionSystemError(
                self.name, f"cannot {what} job {job.job_id} ({job.native_id}): "
                f"{drmaa_message(exc)}") from exc


__all__ = [
    "DRMAA_STATES",
    "PROCESS_SESSION",
    "STATIC_TLS_TUNABLE",
    "DrmaaSystem",
    "EndedJob",
    "ProcessSession",
    "drmaa_message",
    "drmaa_process_environment",
    "load_drmaa",
]
