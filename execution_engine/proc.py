"""Small process helpers shared by the daemon's processes (Linux ``/proc`` readers among them)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux), so that
    a SIGKILLed Monitor or master leaves no orphaned actors behind. Elsewhere a no-op; the loops
    also check :func:`parent_gone`.

    A parent that died before this call (while the new process was starting) would never be
    signalled for: a multiprocessing child then sends itself ``signum`` at once.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os.kill(os.getpid(), signum)


def parent_gone(original_parent: int) -> bool:
    """True when the process that started us is gone (we were re-parented)."""
    return os.getppid() != original_parent


def close_on_exec_all() -> None:
    """Mark every open descriptor above stderr close-on-exec.

    Descriptors a process inherited (multiprocessing's sentinel pipe among them) would otherwise
    pass on to every job it starts: a job holding an actor's sentinel would make the Monitor wait
    for the job before it sees the actor stop.
    """
    fd_dir = Path("/proc/self/fd")
    for entry in fd_dir.iterdir() if fd_dir.is_dir() else ():
        fd = int(entry.name)
        if fd > 2:
            # The listing's own descriptor is closed by now: nothing to do for it.
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards), or None."""
    try:  # one read(2) (the file is far shorter than 4 KiB): this is on the submission path
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(b")") + 2:].split()


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if there is none."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_running(pid: int, start: int | None = None) -> bool:
    """True when process ``pid`` exists and is not a zombie (and, given ``start``, is the process
    that started then, not a later one that got the same pid)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return False
    return start is None or int(fields[19]) == start


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, as ``/proc`` lists them now (empty when ``pid`` is gone)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [pid]
    for child in children:
        found.extend(process_tree(int(child)))
    return found
