"""Bells: how processes tell an actor pool that it has work.

A bell is a counting semaphore shared by the daemon's processes. Ringing posts to it; an actor
waits on it with a timeout and then takes every pending ring at once. Unlike an Event (a lock and
a condition), a semaphore holds no lock between calls, so a process killed by SIGKILL while it
rings or waits cannot leave the bell stuck for everyone else.
"""

from __future__ import annotations

from multiprocessing.context import BaseContext
from multiprocessing.synchronize import Semaphore

MAX_PENDING = 64
"""Rings beyond this many pending are dropped: a rung bell is a rung bell."""


class Bell:
    def __init__(self, context: BaseContext) -> None:
        self._sem: Semaphore = context.Semaphore(0)

    def ring(self, times: int = 1) -> None:
        """Wake up to ``times`` waiting actors (each ring wakes one)."""
        for _ in range(times):
            try:
                if self._sem.get_value() >= MAX_PENDING:
                    return
            except NotImplementedError:  # platforms without sem_getvalue
                pass
            self._sem.release()

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds pass; True when rung. Pending rings are taken."""
        rung = self._sem.acquire(timeout=max(0.0, timeout))
        if rung:
            self.clear()
        return rung

    def clear(self) -> None:
        """Take every pending ring."""
        while self._sem.acquire(block=False):
            pass
