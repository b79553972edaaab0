"""When the Monitor reads the change stream, and when it polls instead.

A change stream costs mongod about 25 us for every write to the jobs collection: each oplog entry
goes through the stream's pipeline whether it matches or not. During a burst most writes are the
engine's own (five per job), and the stream becomes the largest single cost of the database
(measured: 0.3 ms of mongod's CPU per job, a third of it). Yet during a burst the stream is least
needed: the actors are working through their claims and hand work on to each other directly.

So the Monitor reads the stream while the engine is quiet (new jobs are seen at once), and when
the stream brings more than :data:`BURST_EVENTS` events within a second it closes the stream and
polls every :data:`BURST_POLL` seconds instead, with queries that read a few index keys
(``JobStore.backlog``). It goes back to the stream once the pipeline has been empty for
:data:`QUIET` seconds, or after :data:`MAX_BURST` seconds at most (a saturated system's backlog
keeps the pipeline from emptying; if the burst goes on, the stream's event rate brings polling
back within a fraction of a second). Reopening the stream rings every pool once, so nothing that
came in between is missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BURST_EVENTS = 200
"""Stream events within one second that make a burst."""
BURST_POLL = 0.1
"""Seconds between polls during a burst (the delay before a new job is seen then: the actors
hand work on to each other directly meanwhile, so a poll mostly finds them busy already; each
poll costs mongod four commands)."""
QUIET = 1.0
"""Seconds the pipeline must stay empty before the stream is read again."""
MAX_BURST = 5.0
"""Seconds of polling at most before the stream is tried again."""


class BurstWatch:
    """Counts stream events and decides between the stream and polling (see the module)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._window_start = clock()
        self._events = 0
        self._burst_since: float | None = None
        self._busy_at = 0.0

    @property
    def bursting(self) -> bool:
        return self._burst_since is not None

    def on_event(self) -> bool:
        """Count one stream event; True when it starts a burst (the stream should be closed)."""
        now = self._clock()
        if now - self._window_start >= 1.0:
            self._window_start, self._events = now, 0
        self._events += 1
        if self._events < BURST_EVENTS:
            return False
        self._burst_since = self._busy_at = now
        self._events = 0
        return True

    def end(self) -> None:
        """End the burst now (the database does not answer: the stream's retries take over)."""
        self._burst_since = None
        self._window_start, self._events = self._clock(), 0

    def on_poll(self, pipeline_busy: bool) -> bool:
        """Record what a poll found; True when the burst is over (the stream should reopen)."""
        assert self._burst_since is not None, "polls belong to a burst"
        now = self._clock()
        if pipeline_busy:
            self._busy_at = now
        if now - self._busy_at >= QUIET or now - self._burst_since >= MAX_BURST:
            self.end()
            return True
        return False
