"""How the Local system learns that its jobs ended and what they used: pidfds of job processes
in one epoll set (:class:`PidWatcher`, which in the process that started the jobs also reaps
them with ``wait4``), and the FIFO that carries each reaped job's rusage to the Status actor
(:class:`UsageChannel`, one :func:`usage_line` per job)."""

from __future__ import annotations

import logging
import os
import resource
import select
import signal
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from execution_engine.systems.base import Usage

log = logging.getLogger(__name__)

Reaped = Callable[[int, int, resource.struct_rusage], None]
"""Called with the pid, wait status and rusage of each child a reaping watcher collects."""


class PidWatcher:
    """pidfds of job processes in one epoll set.

    ``reap=True`` (in the process that started the jobs) collects each exited child at once from a
    background thread with ``wait4``, so no zombie is left, and hands its rusage to
    ``on_reaped``; otherwise the epoll descriptor only tells a waiting Status actor that a job
    ended (or, through :meth:`listen`, that a reaper sent the usage of one).
    """

    def __init__(self, reap: bool, on_reaped: Reaped | None = None) -> None:
        self._epoll = select.epoll()
        self._fds: dict[int, int] = {}  # pidfd -> pid
        self._by_pid: dict[int, int] = {}
        self._lock = threading.Lock()
        self._reap = reap
        self._on_reaped = on_reaped
        self._thread: threading.Thread | None = None
        self._exited = threading.Condition()
        self._fifo: int | None = None

    def fileno(self) -> int:
        return self._epoll.fileno()

    def listen(self, fd: int | None) -> None:
        """Wake on ``fd`` too (the read end of the usage FIFO, which the caller reads), or on
        nothing more (None); the descriptor stays the caller's."""
        if self._fifo is not None:
            self._epoll.unregister(self._fifo)
        self._fifo = fd
        if fd is not None:
            self._epoll.register(fd, select.EPOLLIN)

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
                self._collect(pid)
                self.forget(pid)
                with self._exited:
                    self._exited.notify_all()

    def _collect(self, pid: int) -> None:
        """Reap the exited child ``pid`` and pass on its rusage."""
        try:
            _, status, usage = os.wait4(pid, 0)  # it has exited: this does not block
        except ChildProcessError:  # not ours to reap (or already reaped)
            return
        if self._on_reaped is None:
            return
        try:
            self._on_reaped(pid, status, usage)
        except Exception:  # the reaper must go on: a lost usage record is not worth a zombie
            log.exception("cannot record the usage of process %d", pid)

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
            self._fifo = None
        self._epoll.close()


class UsageChannel:
    """The FIFO ``<state_dir>/ended``, from the processes that reap jobs to the Status actor:
    one line per reaped job, ``<native id> wall=... user=... sys=... maxrss_kb=...
    [signal=SIG...]`` (:func:`usage_line`). A line is shorter than ``PIPE_BUF``, so lines of
    several writers never mix. The line is the usage record, and its arrival wakes the Status
    actor when it is listening: no file is made per job (a file creation costs about as much
    as starting a trivial job). A line that cannot be sent (no reader yet, the pipe full) is
    written as the job's ``.execd/usage`` file instead."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: int | None = None
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            log.warning("cannot make the FIFO %s: usage is recorded in files: %s", path, exc)

    def open_reader(self) -> int | None:
        """The read end, non-blocking; opened read-write so that it never reads as hung up
        when no reaper has it open. None when the path is not a FIFO."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def send(self, line: str) -> bool:
        """Write ``line`` to the reader; False when there is none or its pipe is full."""
        data = line.encode()
        if len(data) > select.PIPE_BUF:
            return False
        try:
            if self._writer is None:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.close(fd)
                    return False
                self._writer = fd
            return os.write(self._writer, data) == len(data)
        except BlockingIOError:  # full: the reader is behind
            return False
        except OSError:  # no reader now (ENXIO, EPIPE), or no FIFO
            self.close()
            return False

    def close(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None


def usage_line(native_id: str, status: int, usage: resource.struct_rusage, wall: float,
               starter_maxrss_kb: int) -> str:
    """The line :class:`UsageChannel` carries for a reaped job (``status``: its wait status).

    ``maxrss_kb`` is left out when it is not above ``starter_maxrss_kb``, the peak resident
    memory of the process that started the job: a process spawned (``vfork``) and exec'd by it
    inherits that peak as its own at ``exec`` (Linux keeps the largest of the memories a process
    had), so a smaller figure tells nothing of the job. A job above it is measured exactly."""
    fields = [native_id, f"wall={wall:.3f}", f"user={usage.ru_utime:.3f}",
              f"sys={usage.ru_stime:.3f}"]
    if usage.ru_maxrss > starter_maxrss_kb:
        fields.append(f"maxrss_kb={usage.ru_maxrss}")
    if os.WIFSIGNALED(status):
        fields.append(f"signal={signal_name(os.WTERMSIG(status))}")
    return " ".join(fields) + "\n"


def parse_usage_line(line: str) -> tuple[str, Usage] | None:
    """The native id and usage a :func:`usage_line` says, or None when it is not one."""
    native_id, *fields = line.split()
    figures: dict[str, str] = dict(f.partition("=")[::2] for f in fields)
    try:
        user, system = float(figures["user"]), float(figures["sys"])
        rss = figures.get("maxrss_kb")
        usage = Usage(wall_s=float(figures["wall"]), cpu_s=round(user + system, 3),
                      max_rss_mb=None if rss is None else round(int(rss) / 1024, 1),
                      signal=figures.get("signal"))
    except (KeyError, ValueError):
        return None
    return native_id, usage


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"



__all__ = ["PidWatcher", "Reaped", "UsageChannel", "parse_usage_line", "signal_name",
           "usage_line"]
