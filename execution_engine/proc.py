"""Small process helpers shared by the daemon's processes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux), so that
    a SIGKILLed Monitor or master leaves no orphaned actors behind. Elsewhere a no-op; the loops
    also check :func:`parent_gone`."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass


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
