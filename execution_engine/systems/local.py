"""The Local execution system: jobs run as processes of this host.

* Each job runs ``/bin/sh <job script>`` in a session of its own (``setsid``), so it survives a
  daemon restart and can be killed as a whole process group.
* At most ``slots`` slots are taken at once on the host; a job takes one per core it asks for
  (``cores``, default 1; more than ``slots`` is refused at submission). A slot is a lock on one
  byte of the file ``slots/lock`` in the state directory (an open-file-description lock,
  ``F_OFD_SETLK``), held by the job script's process on one descriptor however many slots it
  holds: it is given back by the kernel when the job ends, however it ends, even when the
  daemon is dead. Several Submit actors and several daemons sharing a state directory therefore
  never overrun the host (:mod:`~execution_engine.systems.local_slots`). A job asking for cores
  is pinned to as many CPUs, chosen from its slots
  (:func:`~execution_engine.systems.local_limits.cpus_for`).
* The native id is ``<pid>:<start time>`` (start time in clock ticks since boot, from
  ``/proc``): a recycled pid is never mistaken for the job.
* A kill signals a process group only when it is the job's own (:func:`job_process`): the
  pid the job script recorded in ``<job dir>/.execd/pid`` (when it has got that far), the
  process start time of the native id, a process that leads its own session and group and runs
  exactly the job's script. A native id from a forged job document names a process that fails
  one of these and is never signalled.
* Status comes from the exit-code file first, then from the process. Processes are watched through
  pidfds, so the Status actor wakes the moment a job exits instead of waiting for its next cycle.
* Usage: the process that started a job watches it through a pidfd too and reaps it the moment
  it exits, with ``wait4``; it sends the rusage (wall, user and system CPU, largest resident set
  of the script and the processes it waited for, the signal that ended it) as one line through
  the FIFO ``ended`` of the state directory (:mod:`~execution_engine.systems.local_usage`; a
  file per job would cost what the job does). The Status actor reports an ended job once its
  line is there (waiting :data:`USAGE_WAIT` for it, then woken by its arrival), or
  :data:`USAGE_PATIENCE` seconds after the end when no line comes (the starter is gone: a
  restart). The job script therefore runs the command without GNU time (``EXECD_USAGE``).
* Limits: a job over its ``walltime_s`` gets TERM on its process group, KILL ``kill_grace``
  seconds later, and ends with reason ``walltime_exceeded`` (``.execd/limit`` records it before
  the signal, so that a restarted actor carries on). ``memory_mb`` is enforced by the kernel's
  memory controller or ``ulimit -v`` (:mod:`~execution_engine.systems.local_limits`); an
  out-of-memory kill in the job's cgroup ends it with reason ``memory_exceeded``.
* A job with an account (``[identity]``, the daemon as root) is started through
  :mod:`~execution_engine.systems.local_launch`, which sets its memory limit and then becomes the
  account (``setpriv``) before the script is even opened; so is any job with a memory limit.
  The native id, kills, slots and usage are the same as for any job.
* What the job script itself prints (a shell error, never the command's output, which goes to
  ``job.stdout``/``job.stderr``) is appended to ``<state_dir>/systems/<name>/jobs.log``, one
  file opened once, rather than to a ``scheduler.log`` per job: creating a file per job is a
  metadata write that costs as much as starting the job on some disks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import resource
import select
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from execution_engine.errors import SubmissionRejected
from execution_engine.jobscript import NO_LIMIT_EXIT, SLOT_FD, USAGE_ENV
from execution_engine.proc import is_running, process_start_time
from execution_engine.reasons import Reason
from execution_engine.states import JobState
from execution_engine.systems import local_limits, records
from execution_engine.systems.base import (
    PID_NAME,
    USAGE_NAME,
    ExecutionSystem,
    JobSpec,
    StatusReport,
    Submission,
    Usage,
    ended_report,
    host_name,
    read_exit_code,
)
from execution_engine.systems.local_launch import SETPRIV, Launch, is_job_command_line
from execution_engine.systems.local_limits import MemoryMethod
from execution_engine.systems.local_slots import SlotPool
from execution_engine.systems.local_usage import (
    PidWatcher,
    UsageChannel,
    parse_usage_line,
    signal_name,
    usage_line,
)

log = logging.getLogger(__name__)


USAGE_PATIENCE = 2.0
"""Seconds an ended job's report waits for its usage record (written when the process that
started the job reaps it). Only a job whose starter is gone (a restart) waits that long."""

SWEEP_INTERVAL = 600.0
"""Seconds between two looks for cgroups left behind by jobs whose end was recorded by an
actor that died before it removed them."""

SWEEP_MIN_AGE = 60.0
"""A job cgroup younger than this is never swept: its job may be about to join it."""

ENDED_FIFO = "ended"
"""The FIFO in the state directory through which reapers send usage to the Status actor."""

USAGE_WAIT = 0.02
"""Seconds a status call waits for the usage of jobs it found ended without it."""

USAGE_KEPT = 600.0
"""Seconds the usage of a job the Status actor does not follow is kept for it."""


def parse_native_id(native_id: str) -> tuple[int, int]:
    pid, _, start = native_id.partition(":")
    return int(pid), int(start or 0)


def job_process(job: JobSpec) -> int | None:
    """The pid of the job's running script, when ``job.native_id`` names it; else None.

    The process must be the one the engine started for this job: the native id's pid and start
    time match a live process; that process leads its own session and process group (the
    system starts every job script with ``setsid``); its command line is exactly the job's
    script as the system started it; and the pid the script recorded under ``.execd/``, once
    written, is the same. Any mismatch (a forged or stale id, a recycled pid) gives None.
    """
    try:
        pid, start = parse_native_id(job.native_id or "")
    except ValueError:
        return None
    if pid <= 1 or not start or not is_running(pid, start):
        return None
    recorded = records.read_record(job.job_dir, PID_NAME)
    try:
        leads = os.getpgid(pid) == pid and os.getsid(pid) == pid
    except OSError:
        leads = False
    # An empty record is one the script is writing at this moment (its shell truncates first).
    ours = (leads and recorded in (None, "", str(pid))
            and is_job_command_line(_command_line(pid) or [], job.script))
    # Checked again last: the same process all along, not one that took a freed pid meanwhile.
    return pid if ours and is_running(pid, start) else None


class LocalSystem(ExecutionSystem):
    """Jobs as processes of this host, ``slots`` at a time."""

    kind: ClassVar[str] = "local"
    host_bound: ClassVar[bool] = True
    default_status_interval: ClassVar[float] = 1.0
    option_spec: ClassVar[Mapping[str, str]] = {
        "slots": f"integer(min=1, max=100000, default={os.cpu_count() or 1})",
        "kill_grace": "float(min=0, max=3600, default=10.0)",
        "slot_wait": "float(min=0, max=60, default=0.5)",
        "memory_limit": "option('auto', 'ulimit', 'none', default='auto')",
        "cgroup_parent": "string(default='')",
    }

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        state_dir = Path(self.options["state_dir"])
        self.slots = SlotPool(state_dir / "slots", int(self.options["slots"]))
        self.slot_wait = float(self.options["slot_wait"])
        self.kill_grace = float(self.options["kill_grace"])
        self._children: PidWatcher | None = None
        self._watched: PidWatcher | None = None
        self._jobs_log_fd: int | None = None
        self._channel = UsageChannel(state_dir / ENDED_FIFO)
        self._listening = False
        self._fifo: int | None = None  # the read end of the usage FIFO, once opened
        self._fifo_tried = False
        self._memory_method: MemoryMethod | None = None
        self._detected_method: MemoryMethod | None = None
        self._cpus = sorted(os.sched_getaffinity(0))
        self._host = host_name()
        # pid -> (job dir, native id, monotonic start), until reaped
        self._spawned: dict[int, tuple[Path, str, float]] = {}
        # native id -> (usage received, when), until its job is reported or forgotten
        self._usages: dict[str, tuple[Usage, float]] = {}
        self._reported: set[str] = set()  # native ids whose usage went into a report
        self._partial = b""  # the start of a line not yet read whole
        self._limit_sent: dict[str, tuple[str, float]] = {}  # native id -> (reason, TERM time)
        self._refused: set[str] = set()  # native ids not signalled (told once)
        self._ending: dict[str, float] = {}  # job id -> when first seen ended without usage
        self._next_sweep = 0.0

    # ------------------------------------------------------------------ limits
    @property
    def memory_method(self) -> MemoryMethod:
        """How this system limits its jobs' memory, chosen once per process (the cgroup folders
        made on the way) and written to ``<state_dir>/memory_method`` for ``execd systems``."""
        if self._memory_method is None:
            method = local_limits.choose_memory_method(
                _cgroup_folder_name(self.name), str(self.options.get("memory_limit", "auto")),
                str(self.options.get("cgroup_parent", "")))
            self._memory_method = method
            _remember_method(Path(self.options["state_dir"]), method)
            log.info("%s: memory limits: %s", self.name, method.describe())
        return self._memory_method

    def _known_method(self) -> MemoryMethod:
        """The memory method to find jobs' cgroups by: the one this process chose, else the
        one it would choose, found without making anything (the Status actor only reads and
        removes job cgroups)."""
        if self._memory_method is not None:
            return self._memory_method
        if self._detected_method is None:
            self._detected_method = local_limits.choose_memory_method(
                _cgroup_folder_name(self.name), str(self.options.get("memory_limit", "auto")),
                str(self.options.get("cgroup_parent", "")), set_up=False)
        return self._detected_method

    @classmethod
    def limits(cls, name: str, options: Mapping[str, Any]) -> list[str]:
        """How the jobs' requirements are enforced, in words (``execd systems``), for the
        system ``name`` with the checked ``options``. The memory method is the one the daemon
        recorded when it chose it, else the one this process would choose (nothing is made
        meanwhile)."""
        recorded = _recorded_method(Path(options["state_dir"]))
        if recorded is None:
            method = local_limits.choose_memory_method(
                _cgroup_folder_name(name),
                str(options.get("memory_limit", "auto")), str(options.get("cgroup_parent", "")),
                set_up=False)
            recorded = f"{method.describe()} (detected now: the daemon decides when it starts)"
        return [f"cores: a job takes one of the {options['slots']} slots per core it asks for, "
                f"and is pinned to as many CPUs",
                f"memory_mb: {recorded}",
                f"walltime_s: TERM to the job's process group once over it, KILL "
                f"{options['kill_grace']} s later (reason walltime_exceeded)"]

    def _cores(self, job: JobSpec) -> int:
        """The slots ``job`` takes; SubmissionRejected when it asks for more than there are."""
        cores = _positive(job.resources.cores) or 1
        if cores > self.slots.count:
            raise SubmissionRejected(
                self.name, f"the job asks for {cores} cores and this system has "
                           f"{self.slots.count} slots (option slots): it could never start")
        return cores

    def _launch(self, job: JobSpec) -> Launch:
        """What is set before the job script runs: its memory limit (none without
        ``memory_mb``) and its account (none: the daemon's). A cgroup that cannot be made
        falls back to ``ulimit -v`` for this job, with a warning: the job never runs unlimited
        for want of a cgroup."""
        account = job.account
        if account is None:
            launch = Launch()
        elif os.geteuid() != 0:
            raise SubmissionRejected(self.name, f"cannot run the job as account {account.name}:"
                                                " only a daemon running as root can")
        elif not os.access(SETPRIV, os.X_OK):
            raise SubmissionRejected(self.name, f"cannot run the job as account {account.name}:"
                                                f" {SETPRIV} (util-linux) is missing")
        else:
            launch = Launch(uid=account.uid, gid=account.gid, groups=account.groups)
        memory_mb = _positive(job.resources.memory_mb)
        if memory_mb is None:
            return launch
        method = self.memory_method
        if method.uses_cgroups:
            try:
                path = local_limits.make_job_cgroup(method, job.tag, memory_mb)
            except OSError as exc:
                log.warning("%s: cannot make the memory cgroup of job %s, limiting it with "
                            "ulimit -v instead: %s", self.name, job.job_id, exc)
            else:
                return dataclasses.replace(launch, cgroup=path)
        if method.kind == local_limits.NONE:
            return launch
        return dataclasses.replace(launch, ulimit_kib=memory_mb * 1024)

    # ------------------------------------------------------------------ run
    def run(self, job: JobSpec) -> Submission:
        if not job.script.is_file():
            raise SubmissionRejected(self.name, f"job script {job.script} is missing")
        cores = self._cores(job)
        if self._children is None:
            self._children = PidWatcher(reap=True, on_reaped=self._record_usage)
        held = self.slots.acquire(self.slot_wait, self._children.wait_exit,
                                  before_waiting=self.before_waiting, count=cores)
        slot = held.fd
        launch = Launch()
        try:
            if slot == SLOT_FD:  # posix_spawn's dup2 onto itself would keep close-on-exec
                moved = os.dup(slot)
                os.close(slot)
                slot = moved
            launch = self._launch(job)
            cpus = None
            if _positive(job.resources.cores) is not None:
                cpus = local_limits.cpus_for(held.indexes, cores, self._cpus)
            pid = self._spawn(job, launch, slot, cpus)
        except OSError as exc:
            self._drop_cgroup(launch)
            raise SubmissionRejected(self.name, f"cannot start {job.script}: {exc}") from exc
        finally:
            os.close(slot)  # the job's process holds the slots from now on
        native_id = f"{pid}:{process_start_time(pid)}"  # an unreaped child is in /proc
        self._spawned[pid] = (job.job_dir, native_id, time.monotonic())
        self._children.watch(pid)
        return Submission(native_id, JobState.RUNNING)

    def _spawn(self, job: JobSpec, launch: Launch, slot: int, cpus: set[int] | None) -> int:
        """Start the job script in a session of its own (through ``launch``), holding the
        slots on :data:`SLOT_FD`, pinned to ``cpus`` (None: not pinned) from its first
        instruction."""
        log_fd = self._jobs_log()
        environment = {**_base_environment(), USAGE_ENV: self.kind}
        if job.account is not None:
            environment.update(job.account.environment())
        argv = launch.argv(job.script)
        with local_limits.pinned(cpus) if cpus is not None else contextlib.nullcontext():
            return os.posix_spawn(
                argv[0],
                argv,
                environment,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                    (os.POSIX_SPAWN_DUP2, slot, SLOT_FD),
                ],
                setsid=True,
            )

    def _drop_cgroup(self, launch: Launch) -> None:
        """Remove the cgroup made for a job that did not start."""
        if launch.cgroup is not None:
            local_limits.remove_cgroup(launch.cgroup)

    def _record_usage(self, pid: int, status: int, usage: resource.struct_rusage) -> None:
        """Send what the job of the reaped script ``pid`` used to the Status actor (which
        wakes it), else record it in the job's ``.execd/usage`` (the keys GNU time would
        write, plus ``signal`` when the script itself was killed)."""
        spawned = self._spawned.pop(pid, None)
        if spawned is None:
            return
        job_dir, native_id, began = spawned
        line = usage_line(native_id, status, usage, time.monotonic() - began,
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        if not self._channel.send(line):
            _, *fields = line.split()
            _write_new_record(job_dir, USAGE_NAME, "\n".join(fields) + "\n")

    def _jobs_log(self) -> int:
        """The descriptor of this system's shared log of job scripts' own messages."""
        if self._jobs_log_fd is None:
            path = Path(self.options["state_dir"]) / "jobs.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._jobs_log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                        | os.O_CLOEXEC, 0o644)
        return self._jobs_log_fd

    # ------------------------------------------------------------------ status
    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        """From each job's exit-code file and process (one ``/proc`` read per running job);
        an ended job is reported once its usage is there (:meth:`_awaiting_usage`). Running
        jobs are watched through pidfds (their end wakes the Status actor), and stopped when
        over their walltime."""
        watcher = self._watcher()
        watcher.drain()
        self._receive_usages()
        jobs = list(jobs)
        reports = {}
        alive_pids = set()
        awaiting: list[JobSpec] = []
        for job in jobs:
            if job.native_id is None:
                continue
            try:
                pid, start = parse_native_id(job.native_id)
            except ValueError:
                continue  # not an id of ours: unknown
            code = read_exit_code(job)
            running = code is None and is_running(pid, start)
            if running:
                alive_pids.add(pid)
                # It may have exited while we started watching it.
                running = watcher.watch(pid) and is_running(pid, start)
            if running:
                reports[job.job_id] = StatusReport(JobState.RUNNING)
                self._enforce_walltime(job, start)
            elif self._awaiting_usage(job):
                awaiting.append(job)
            else:
                reports[job.job_id] = self._ended_report(job, code)
        for pid in watcher.watched() - alive_pids:
            watcher.forget(pid)
        still = self._wait_for_usage(awaiting)
        for job in awaiting:
            reports[job.job_id] = (StatusReport(JobState.RUNNING) if job in still
                                   else self._ended_report(job, None))
        self._listen(bool(still))
        self._prune({job.job_id for job in jobs}, {job.native_id for job in jobs})
        self._sweep_now_and_then(jobs)
        return reports

    def _wait_for_usage(self, jobs: list[JobSpec]) -> list[JobSpec]:
        """Those of the ended ``jobs`` whose usage is still awaited after waiting up to
        :data:`USAGE_WAIT` seconds for their reapers' lines. A job's exit wakes this actor and
        its reaper at once, and the reaper may need a moment (its process is busy starting
        jobs): a short wait here saves a whole status cycle."""
        deadline = time.monotonic() + USAGE_WAIT
        while jobs and self._fifo is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fifo], [], [], left)[0]:
                break
            self._receive_usages()
            jobs = [job for job in jobs if self._awaiting_usage(job)]
        return jobs

    def _listen(self, awaiting: bool) -> None:
        """Be woken by the usage FIFO while a job that has ended waits for its usage (its
        reaper had not sent it yet when its exit woke us): the line's arrival is then the
        wake-up. Not otherwise: the lines of jobs not followed yet (their end can come before
        their start is recorded) would only wake the actor for nothing."""
        if awaiting == self._listening:
            return
        if self._fifo is not None:
            self._watcher().listen(self._fifo if awaiting else None)
        self._listening = awaiting

    def _receive_usages(self) -> None:
        """Read the usage lines reapers sent since the last call (the FIFO is opened at the
        first call: from then on reapers send rather than write files)."""
        if self._fifo is None:
            if self._fifo_tried:
                return
            self._fifo_tried = True
            self._fifo = self._channel.open_reader()
            if self._fifo is None:
                return
        chunks = [self._partial]
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := os.read(self._fifo, 65536):
                chunks.append(chunk)
        *lines, self._partial = b"".join(chunks).split(b"\n")
        now = time.monotonic()
        for line in lines:
            parsed = parse_usage_line(line.decode(errors="replace")) if line.strip() else None
            if parsed is not None:
                self._usages[parsed[0]] = (parsed[1], now)

    def _watcher(self) -> PidWatcher:
        if self._watched is None:
            self._watched = PidWatcher(reap=False)
        return self._watched

    def _awaiting_usage(self, job: JobSpec) -> bool:
        """Whether the report of an ended job waits for its usage record: not yet recorded,
        and ended less than :data:`USAGE_PATIENCE` seconds ago (as first seen here)."""
        if job.native_id in self._usages or (job.job_dir / USAGE_NAME).exists():
            self._ending.pop(job.job_id, None)
            return False
        first = self._ending.setdefault(job.job_id, time.monotonic())
        return time.monotonic() - first < USAGE_PATIENCE

    def _ended_report(self, job: JobSpec, code: int | None) -> StatusReport:
        """The final report of an ended job (``code``: its exit code as read, None to read it
        again): its exit code, why it ended when a limit is the cause (its cgroup removed
        meanwhile), what it used."""
        if code is None:  # it may have been written just after the first read
            code = read_exit_code(job)
        limit = self._limit_reason(job, code)
        received = self._usages.get(job.native_id or "")
        ended_by = self._end_signal(job, code, received and received[0])
        if received is None:
            usage = Usage(node=self._host, signal=ended_by)
        else:
            usage = dataclasses.replace(received[0], node=self._host, signal=ended_by)
            self._reported.add(job.native_id or "")
        report = ended_report(job, "(process gone)", reason=limit and limit[0], usage=usage,
                              exit_code=code)
        if limit is not None and report.state is not JobState.FINISHED:
            report = dataclasses.replace(report, message=f"{limit[1]}: {report.message}")
        return report  # what is kept of the job is forgotten once it is no longer asked about

    def _limit_reason(self, job: JobSpec, code: int | None) -> tuple[str, str] | None:
        """Why the ended ``job`` ended when one of its limits is the cause, in a reason and in
        words: its memory limit could not be set, the walltime the engine ended it for, an
        out-of-memory kill in its cgroup. Its cgroup is removed on the way."""
        if code == NO_LIMIT_EXIT:
            said = records.read_record(job.job_dir, records.NO_LIMIT_NAME)
            if said is not None:
                return (Reason.INTERNAL_ERROR.value, f"the job script {said[:200]}, and the "
                        "command did not run without its memory limit")
        native_id = job.native_id or ""
        limit = self._limit_sent.get(native_id)
        limited = (_positive(job.resources.walltime_s) or _positive(job.resources.memory_mb))
        if limit is None and limited:  # only such jobs have a record: no read for the others
            limit = records.recorded_limit(job.job_dir, native_id)
        memory = self._memory_evidence(job, code, recorded=limit is not None)
        reason = limit[0] if limit is not None else memory
        if reason == Reason.WALLTIME_EXCEEDED.value:
            walltime = _positive(job.resources.walltime_s)
            return reason, f"walltime of {walltime} s exceeded" if walltime else "walltime exceeded"
        if reason == Reason.MEMORY_EXCEEDED.value:
            memory_mb = _positive(job.resources.memory_mb)
            limit_words = f"memory limit of {memory_mb} MB" if memory_mb else "memory limit"
            return reason, f"{limit_words} exceeded (killed by the kernel, out of memory)"
        return None

    def _memory_evidence(self, job: JobSpec, code: int | None, *, recorded: bool
                         ) -> str | None:
        """``memory_exceeded`` when the job's cgroup counted an out-of-memory kill (recorded in
        ``.execd/limit``, so that it outlives the cgroup), else None. Removes the cgroup."""
        if _positive(job.resources.memory_mb) is None:
            return None
        method = self._known_method()
        path = local_limits.job_cgroup(method, job.tag)
        if path is None or not path.is_dir():
            return None
        found = None
        if not recorded and local_limits.oom_killed(
                method, path, killed_by_sigkill=code in (None, 128 + signal.SIGKILL)):
            found = Reason.MEMORY_EXCEEDED.value
            records.record_limit(job.job_dir, job.native_id or "", found, 0.0)
        local_limits.remove_cgroup(path)  # a process left behind keeps it: swept later
        return found

    @staticmethod
    def _end_signal(job: JobSpec, code: int | None, received: Usage | None) -> str | None:
        """The signal that ended the job: from its exit code (the command's, above 128), else
        the one that killed the script itself, as its reaper said."""
        if code is not None:
            return signal_name(code - 128) if code > 128 else None
        if received is not None:
            return received.signal
        text = records.read_record(job.job_dir, USAGE_NAME) or ""
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key == "signal" and value.startswith("SIG") and value[3:].isalnum():
                return value
        return None

    def _prune(self, job_ids: set[str], native_ids: set[str | None]) -> None:
        """Forget what was kept of jobs no longer followed (ended, or taken by another actor)."""
        for job_id in [j for j in self._ending if j not in job_ids]:
            del self._ending[job_id]
        for native_id in [n for n in self._limit_sent if n not in native_ids]:
            del self._limit_sent[native_id]
        # Usage of jobs not followed (yet: a job's end may be sent before its start is
        # recorded), kept a while; then they belong to nobody this actor follows.
        too_old = time.monotonic() - USAGE_KEPT
        for native_id in [n for n, (_, at) in self._usages.items()
                          if n not in native_ids and (n in self._reported or at < too_old)]:
            del self._usages[native_id]
        self._reported &= self._usages.keys()
        self._refused &= {n for n in native_ids if n is not None}

    def _sweep_now_and_then(self, jobs: list[JobSpec]) -> None:
        """Every :data:`SWEEP_INTERVAL`, remove the empty job cgroups of jobs no longer
        followed (leftovers of an actor that died between a job's end and its cleanup)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        keep = {local_limits.cgroup_name(job.tag) for job in jobs}
        removed = local_limits.sweep(self._known_method(), keep, SWEEP_MIN_AGE)
        if removed:
            log.info("%s: removed %d job cgroups left behind", self.name, removed)

    # ------------------------------------------------------------------ walltime
    def _enforce_walltime(self, job: JobSpec, start: int) -> None:
        """TERM the running ``job`` once it has run longer than its ``walltime_s``, KILL it
        ``kill_grace`` seconds after that TERM (as recorded here, or in ``.execd/limit`` by an
        earlier actor). Only the job's own process group is signalled (:func:`job_process`)."""
        walltime = _positive(job.resources.walltime_s)
        native_id = job.native_id
        if walltime is None or native_id is None:
            return
        if local_limits.seconds_since_start(start) < walltime:
            return
        now = time.time()
        sent = self._limit_sent.get(native_id)
        if sent is None:
            recorded = records.recorded_limit(job.job_dir, native_id)
            if recorded is not None and recorded[0] == Reason.WALLTIME_EXCEEDED.value:
                # A restarted actor carries on; a time from the future is the job's own doing.
                sent = self._limit_sent[native_id] = (recorded[0], min(recorded[1], now))
        if sent is None:
            if self._signal_job(job, signal.SIGTERM, record=now):
                self._limit_sent[native_id] = (Reason.WALLTIME_EXCEEDED.value, now)
                log.info("%s: job %s exceeded its walltime of %d s: TERM", self.name,
                         job.job_id, walltime)
        elif now - sent[1] >= self.kill_grace and self._signal_job(job, signal.SIGKILL):
            log.info("%s: job %s still there %.0f s after TERM: KILL", self.name, job.job_id,
                     now - sent[1])

    def _signal_job(self, job: JobSpec, signum: signal.Signals, *,
                    record: float | None = None) -> bool:
        """Send ``signum`` to the job's process group, when the native id names the job's own
        script (:func:`job_process`), or the script the job's directory records (as
        :meth:`kill` does); else a warning, once, and nothing is sent. ``record``: first record
        the walltime limit, TERM sent at that time."""
        pid = job_process(job)
        recorded = self.find(job) if pid is None else None
        if recorded is not None and recorded != job.native_id:
            pid = job_process(dataclasses.replace(job, native_id=recorded))
        if pid is None:
            if job.native_id not in self._refused:
                self._refused.add(job.native_id or "")
                log.warning("%s: not enforcing the walltime of job %s: %s is not a process the "
                            "engine started for it", self.name, job.job_id, job.native_id)
            return False
        if record is not None:
            records.record_limit(job.job_dir, job.native_id or "",
                                 Reason.WALLTIME_EXCEEDED.value, record)
        try:
            os.killpg(pid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:  # already gone: it ends anyway
                raise
        return True

    def wake_fileno(self) -> int | None:
        return self._watcher().fileno()

    # ------------------------------------------------------------------ kill
    def kill(self, job: JobSpec, force: bool = False) -> None:
        """Signal the job's process group (TERM, or KILL when ``force``), if the native id names
        the job's own running script (:func:`job_process`). An id that is not the job's is
        never signalled (a warning says so): the script the job's directory records is, if it
        still runs. A job that has ended is left alone."""
        native_id = job.native_id
        if native_id is None:
            return
        pid = job_process(job)
        if pid is None:
            if read_exit_code(job) is None and _names_live_process(native_id):
                log.warning("%s: refusing to kill job %s: %s is not a process the engine "
                            "started for it", self.name, job.job_id, native_id)
            # The job's own process, from what its script recorded (the document's native id
            # may have been rewritten by a client): that one is still the job's to end.
            recorded = self.find(job)
            if recorded is None or recorded == native_id:
                return
            native_id = recorded
            pid = job_process(dataclasses.replace(job, native_id=native_id))
            if pid is None:
                return
        signum = signal.SIGKILL if force else signal.SIGTERM
        records.record_kill(job.job_dir, native_id, signum.name)
        try:
            os.killpg(pid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:  # already gone is what we wanted
                raise

    def find(self, job: JobSpec) -> str | None:
        """The job's process from the pid its script recorded, if it ever started."""
        try:
            pid = int(records.read_record(job.job_dir, PID_NAME) or "")
        except ValueError:
            return None
        start = process_start_time(pid)
        if start is not None and _runs_script(pid, job):
            return f"{pid}:{start}"
        return f"{pid}:0"  # it ran and is gone: status comes from the exit-code file

    def close(self) -> None:
        for watcher in (self._children, self._watched):
            if watcher is not None:
                watcher.close()
        self._channel.close()
        if self._fifo is not None:
            os.close(self._fifo)
            self._fifo = None
        if self._memory_method is not None:  # the folders this process made, once empty
            local_limits.remove_root(self._memory_method)
        if self._jobs_log_fd is not None:
            os.close(self._jobs_log_fd)
            self._jobs_log_fd = None


def _write_new_record(job_dir: Path, name: str, text: str) -> None:
    """Write the record ``name`` (``.execd/<file>``) as a new file: the job directory is the
    engine's, ``.execd`` is opened without following a link and the file is created, never
    opened, so nothing a job planted is written through. Four system calls, where
    :func:`records.write_record` (used when the file is already there) walks every folder: this
    runs once per job. A failure is a warning; the job's usage is then unknown."""
    folder, _, file_name = name.rpartition("/")
    try:
        dir_fd = os.open(job_dir / folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        try:
            fd = os.open(file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        records.write_record(job_dir, name, text.rstrip("\n"))
        return
    except OSError as exc:
        log.warning("cannot record %s in %s: %s", name, job_dir, exc)
        return
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _command_line(pid: int) -> list[bytes] | None:
    """The arguments of process ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:-1]
    except OSError:
        return None


def _names_live_process(native_id: str) -> bool:
    try:
        pid, start = parse_native_id(native_id)
    except ValueError:
        return False
    return pid > 0 and is_running(pid, start or None)


def _runs_script(pid: int, job: JobSpec) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(job.script).encode() in f.read()
    except OSError:
        return False


def _base_environment() -> dict[str, str]:
    """What a Local job process starts with; the job script adds the documented rest."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for key in ("HOME", "USER", "LOGNAME", "TZ"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _positive(value: object) -> int | None:
    """A requirement the engine acts on: a positive integer (anything else, from a document
    rewritten after it was checked, is not acted on)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _cgroup_folder_name(system: str) -> str:
    """The folder of a system's job cgroups: its name, when that is a plain file name."""
    return local_limits.cgroup_name(system)


METHOD_RECORD = "memory_method"
"""The file in a system's state directory saying how its jobs' memory is limited."""


def _remember_method(state_dir: Path, method: MemoryMethod) -> None:
    """Write the memory method into the state directory (when it changed), for ``execd
    systems``; a failure only leaves that command guessing."""
    path = state_dir / METHOD_RECORD
    text = method.describe() + "\n"
    try:
        if path.exists() and path.read_text() == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{METHOD_RECORD}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        log.debug("cannot record the memory method in %s: %s", path, exc)


def _recorded_method(state_dir: Path) -> str | None:
    try:
        return (state_dir / METHOD_RECORD).read_text().strip() or None
    except OSError:
        return None
