"""The Local system's slots: ``count`` host-wide slots as byte-range locks of one file, held by
each job's process on one descriptor and given back by the kernel when the job ends, however it
ends (:class:`SlotPool`)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from execution_engine.errors import NoCapacity

WAIT_PATIENCE = 0.05
"""Seconds without a free slot after which a submission's wait counts as long
(:attr:`ExecutionSystem.before_waiting` is called)."""

_OFD_LOCK = struct.Struct("hhqqi")
"""``struct flock`` of Linux (64-bit ``off_t``), for ``F_OFD_SETLK``."""


class Held(NamedTuple):
    """Slots taken: the descriptor holding their locks, and which they are."""

    fd: int
    indexes: tuple[int, ...]


class SlotPool:
    """``count`` host-wide slots: slot ``i`` is a lock on byte ``i`` of ``<directory>/lock``.

    The locks are open-file-description locks (``F_OFD_SETLK``): they belong to the open file,
    not to a process, so they pass to the job script with its descriptor (``posix_spawn``
    keeps it open), are not dropped when another descriptor of the same file is closed, and are
    freed by the kernel once the last descriptor of that open file is gone: when the job ends.
    Any number of slots of one job are held on one descriptor."""

    LOCK_FILE = "lock"

    def __init__(self, directory: Path, count: int) -> None:
        self.directory = directory
        self.count = count
        self._next = 0
        self._path = directory / self.LOCK_FILE
        directory.mkdir(parents=True, exist_ok=True)

    def take(self, count: int = 1) -> Held | None:
        """``count`` free slots on one new descriptor (close-on-exec), or None when fewer are
        free. Slots are tried round-robin from the one after the last taken, so consecutive
        jobs get different slots (and CPUs)."""
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        taken: list[int] = []
        for i in range(self.count):
            index = (self._next + i) % self.count
            if _lock_byte(fd, index):
                taken.append(index)
                if len(taken) == count:
                    self._next = (index + 1) % self.count
                    return Held(fd, tuple(taken))
        os.close(fd)  # gives back the ones taken
        return None

    def try_acquire(self) -> int | None:
        """A descriptor holding one free slot's lock, or None when all are taken."""
        held = self.take(1)
        return None if held is None else held.fd

    def acquire(self, wait: float, sleep: Callable[[float], object] = time.sleep, *,
                before_waiting: Callable[[], object] = lambda: None, count: int = 1) -> Held:
        """``count`` free slots, waiting up to ``wait`` seconds for them; raises NoCapacity.

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
            held = self.take(count)
            if held is not None:
                return held
            if not told and time.monotonic() - started >= WAIT_PATIENCE:
                before_waiting()
                told = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoCapacity("local", f"all {self.count} slots are busy" if count == 1
                                 else f"{count} of the {self.count} slots are not free")
            sleep(min(delay, left))
            delay = min(delay * 2, 0.01)


def _lock_byte(fd: int, index: int) -> bool:
    """Take the lock on byte ``index`` of ``fd``'s file for ``fd``'s open file; False when
    another open file holds it."""
    request = _OFD_LOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, index, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


__all__ = ["Held", "SlotPool"]
