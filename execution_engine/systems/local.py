"""The Local execution system: jobs run as processes of this host.

* Each job runs ``/bin/sh <job script>`` in a session of its own (``setsid``), so it survives a
  daemon restart and can be killed as a whole process group.
* At most ``slots`` jobs run at once on the host. A slot is a lock (``flock``) on one of
  ``slots`` files in the state directory, held by the job script's process: it is given back by
  the kernel when the job ends, however it ends, even when the daemon is dead. Several Submit
  actors and several daemons sharing a state directory therefore never overrun the host.
* The native id is ``<pid>:<start time>`` (start time in clock ticks since boot, from
  ``/proc``): a recycled pid is never mistaken for the job.
* A kill signals a process group only when it is the job's own (:func:`job_process`): the
  pid the job script recorded in ``<job dir>/.execd/pid`` (when it has got that far), the
  process start time of the native id, a process that leads its own session and group and runs
  exactly the job's script. A native id from a forged job document names a process that fails
  one of these and is never signalled.
* Status comes from the exit-code file first, then from the process. Processes are watched through
  pidfds, so the Status actor wakes the moment a job exits instead of waiting for its next cycle.
* What the job script itself prints (a shell error, never the command's output, which goes to
  ``job.stdout``/``job.stderr``) is appended to ``<state_dir>/systems/<name>/jobs.log``, one
  file opened once, rather than to a ``scheduler.log`` per job: creating a file per job is a
  metadata write that costs as much as starting the job on some disks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from execution_engine.errors import NoCapacity, SubmissionRejected
from execution_engine.jobscript import SLOT_FD
from execution_engine.proc import is_running, process_start_time
from execution_engine.states import JobState
from execution_engine.systems import records
from execution_engine.systems.base import (
    PID_NAME,
    ExecutionSystem,
    JobSpec,
    StatusReport,
    Submission,
    ended_report,
    read_exit_code,
)

log = logging.getLogger(__name__)

SHELL = "/bin/sh"

WAIT_PATIENCE = 0.05
"""Seconds without a free slot after which a submission's wait counts as long
(:attr:`ExecutionSystem.before_waiting` is called)."""


def parse_native_id(native_id: str) -> tuple[int, int]:
    pid, _, start = native_id.partition(":")
    return int(pid), int(start or 0)


def job_process(job: JobSpec) -> int | None:
    """The pid of the job's running script, when ``job.native_id`` names it; else None.

    The process must be the one the engine started for this job: the native id's pid and start
    time match a live process; that process leads its own session and process group (the
    system starts every job script with ``setsid``); its command line is exactly the job's
    script as the system started it; and the pid the script recorded under ``.execd/``, once
    there, is the same. Any mismatch (a forged or stale id, a recycled pid) gives None.
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
    ours = (leads and recorded in (None, str(pid))
            and _command_line(pid) == [SHELL.encode(), str(job.script).encode()])
    # Checked again last: the same process all along, not one that took a freed pid meanwhile.
    return pid if ours and is_running(pid, start) else None


class SlotPool:
    """``count`` host-wide slots, each a lock on a file in ``directory``."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        self._next = 0
        directory.mkdir(parents=True, exist_ok=True)

    def try_acquire(self) -> int | None:
        """A descriptor holding a free slot's lock, or None when all are taken."""
        for i in range(self.count):
            index = (self._next + i) % self.count
            fd = os.open(self.directory / f"slot-{index}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._next = (index + 1) % self.count
            return fd
        return None

    def acquire(self, wait: float, sleep: Callable[[float], object] = time.sleep, *,
                before_waiting: Callable[[], object] = lambda: None) -> int:
        """A free slot, waiting up to ``wait`` seconds; raises NoCapacity.

        ``sleep(seconds)`` waits between attempts; the Local system passes one that returns as
        soon as one of its own jobs exits (slots freed by other processes are seen at the next
        attempt, at most 10 ms later). ``before_waiting()`` is called once, when no slot has
        been free for :data:`WAIT_PATIENCE` seconds (a wait for a trivial job's slot is not
        worth telling).
        """
        started = time.monotonic()
        deadline = started + wait
        delay = 0.0005
        told = False
        while True:
            fd = self.try_acquire()
            if fd is not None:
                return fd
            if not told and time.monotonic() - started >= WAIT_PATIENCE:
                before_waiting()
                told = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoCapacity("local", f"all {self.count} slots are busy")
            sleep(min(delay, left))
            delay = min(delay * 2, 0.01)


class PidWatcher:
    """pidfds of job processes in one epoll set.

    ``reap=True`` (in the process that started the jobs) collects each exited child at once from a
    background thread, so no zombie is left; otherwise the epoll descriptor only tells a waiting
    Status actor that a job ended.
    """

    def __init__(self, reap: bool) -> None:
        self._epoll = select.epoll()
        self._fds: dict[int, int] = {}  # pidfd -> pid
        self._by_pid: dict[int, int] = {}
        self._lock = threading.Lock()
        self._reap = reap
        self._thread: threading.Thread | None = None
        self._exited = threading.Condition()

    def fileno(self) -> int:
        return self._epoll.fileno()

    def watch(self, pid: int) -> bool:
        """Watch ``pid``; False when it is already gone."""
        with self._lock:
            if pid in self._by_pid:
                return True
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return False
            self._fds[fd] = pid
            self._by_pid[pid] = fd
            self._epoll.register(fd, select.EPOLLIN)
        if self._reap and self._thread is None:
            self._thread = threading.Thread(target=self._reap_loop, name="local-reaper",
                                            daemon=True)
            self._thread.start()
        return True

    def watched(self) -> set[int]:
        with self._lock:
            return set(self._by_pid)

    def forget(self, pid: int) -> None:
        with self._lock:
            fd = self._by_pid.pop(pid, None)
            if fd is None:
                return
            del self._fds[fd]
            self._epoll.unregister(fd)
            os.close(fd)

    def drain(self) -> list[int]:
        """The pids that exited since the last call (non-blocking)."""
        return [self._fds[fd] for fd, _ in self._epoll.poll(0) if fd in self._fds]

    def _reap_loop(self) -> None:
        while True:
            try:
                events = self._epoll.poll(1.0)
            except (ValueError, OSError):  # closed by close(): the system is going away
                return
            for fd, _ in events:
                with self._lock:
                    pid = self._fds.get(fd)
                if pid is None:
                    continue
                with contextlib.suppress(ChildProcessError):
                    os.waitid(os.P_PIDFD, fd, os.WEXITED)
                self.forget(pid)
                with self._exited:
                    self._exited.notify_all()

    def wait_exit(self, timeout: float) -> None:
        """Sleep until one of the watched children is reaped, or ``timeout`` seconds pass."""
        with self._exited:
            self._exited.wait(timeout)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            self._by_pid.clear()
        self._epoll.close()


class LocalSystem(ExecutionSystem):
    """Jobs as processes of this host, ``slots`` at a time."""

    kind: ClassVar[str] = "local"
    host_bound: ClassVar[bool] = True
    default_status_interval: ClassVar[float] = 1.0
    option_spec: ClassVar[Mapping[str, str]] = {
        "slots": f"integer(min=1, max=100000, default={os.cpu_count() or 1})",
        "kill_grace": "float(min=0, max=3600, default=10.0)",
        "slot_wait": "float(min=0, max=60, default=0.5)",
    }

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.slots = SlotPool(Path(self.options["state_dir"]) / "slots",
                              int(self.options["slots"]))
        self.slot_wait = float(self.options["slot_wait"])
        self.kill_grace = float(self.options["kill_grace"])
        self._children: PidWatcher | None = None
        self._watched: PidWatcher | None = None
        self._jobs_log_fd: int | None = None

    # ------------------------------------------------------------------ run
    def run(self, job: JobSpec) -> Submission:
        if not job.script.is_file():
            raise SubmissionRejected(self.name, f"job script {job.script} is missing")
        if self._children is None:
            self._children = PidWatcher(reap=True)
        slot = self.slots.acquire(self.slot_wait, self._children.wait_exit,
                                  before_waiting=self.before_waiting)
        try:
            if slot == SLOT_FD:  # posix_spawn's dup2 onto itself would keep close-on-exec
                moved = os.dup(slot)
                os.close(slot)
                slot = moved
            log_fd = self._jobs_log()
            pid = os.posix_spawn(
                SHELL,
                [SHELL, str(job.script)],
                _base_environment(),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                    (os.POSIX_SPAWN_DUP2, slot, SLOT_FD),
                ],
                setsid=True,
            )
        except OSError as exc:
            raise SubmissionRejected(self.name, f"cannot start {job.script}: {exc}") from exc
        finally:
            os.close(slot)  # the job's process holds the slot from now on
        start = process_start_time(pid)  # an unreaped child is still in /proc
        self._children.watch(pid)
        return Submission(f"{pid}:{start}", JobState.RUNNING)

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
        if self._watched is None:
            self._watched = PidWatcher(reap=False)
        self._watched.drain()
        reports = {}
        alive_pids = set()
        for job in jobs:
            if job.native_id is None:
                continue
            pid, start = parse_native_id(job.native_id)
            if read_exit_code(job) is not None:
                reports[job.job_id] = ended_report(job)
            elif is_running(pid, start):
                alive_pids.add(pid)
                if self._watched.watch(pid) and not is_running(pid, start):
                    reports[job.job_id] = ended_report(job)  # exited while we watched it
                else:
                    reports[job.job_id] = StatusReport(JobState.RUNNING)
            else:
                # The exit code may have been written just after the first read.
                reports[job.job_id] = ended_report(job, "(process gone)")
        for pid in self._watched.watched() - alive_pids:
            self._watched.forget(pid)
        return reports

    def wake_fileno(self) -> int | None:
        if self._watched is None:
            self._watched = PidWatcher(reap=False)
        return self._watched.fileno()

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
            pid = int((job.job_dir / PID_NAME).read_text().strip())
        except (OSError, ValueError):
            return None
        start = process_start_time(pid)
        if start is not None and _runs_script(pid, job):
            return f"{pid}:{start}"
        return f"{pid}:0"  # it ran and is gone: status comes from the exit-code file

    def close(self) -> None:
        for watcher in (self._children, self._watched):
            if watcher is not None:
                watcher.close()
        if self._jobs_log_fd is not None:
            os.close(self._jobs_log_fd)
            self._jobs_log_fd = None


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
