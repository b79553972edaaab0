"""Supervision of the actor pools: one small state machine per actor, as supervisor keeps one
per program.

States (:class:`ActorState`) and every edge between them (the method that takes it in brackets):

==============================  =========================================================
edge                            when
==============================  =========================================================
stopped  -> starting            the Monitor starts the actor (:meth:`ActorRecord.started`)
starting -> running             the process stayed up :data:`START_SECONDS` (:meth:`tick`)
starting -> backoff             the process died, at most :data:`FAILING_RESTARTS` deaths
running  -> backoff               within :data:`FAILING_WINDOW` (:meth:`exited`)
starting -> failing             the process died, more than :data:`FAILING_RESTARTS` deaths
running  -> failing               within :data:`FAILING_WINDOW` (:meth:`exited`)
backoff  -> starting            its restart delay passed: restarted (:meth:`started`)
failing  -> failing             its restart delay passed: restarted, still reported failing
                                  (:meth:`started`), and dying again (:meth:`exited`)
failing  -> running             a restart stayed up :data:`START_SECONDS` (:meth:`tick`)
any      -> stopped             the Monitor stops the pools (warm stop, reload) (:meth:`stopped`)
==============================  =========================================================

The restart delay grows with the deaths counted in the window: ``base * 2 ** (deaths - 1)``,
capped at :data:`MAX_BACKOFF` (``base`` is ``[monitor] restart_backoff``). A failing actor is
still restarted (at the capped pace), so that a cause that goes away (a database back, a plugin
fixed) ends the failure without an operator; the operator sees ``failing`` in the daemon's
document (``execd status``) meanwhile. Deaths older than the window are forgotten, so an actor
that dies once a day restarts at once each time.

:class:`ActorRecord` is pure (clocks passed in) so each edge is tested on a fake clock;
:class:`Supervisor` holds the processes and acts on what the records decide.
"""

from __future__ import annotations

import enum
import logging
import multiprocessing.process
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

START_SECONDS = 3.0
"""Seconds a started actor must stay up to count as running."""
FAILING_RESTARTS = 5
"""An actor that died more than this many times within :data:`FAILING_WINDOW` is failing."""
FAILING_WINDOW = 300.0
"""Seconds over which deaths are counted (for the failing state and the backoff)."""
MAX_BACKOFF = 30.0
"""Seconds at most between a death and the restart."""
STOP_TIMEOUT = 30.0
"""Seconds actors get to finish their batch at a warm stop before they are killed."""


class ActorState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    FAILING = "failing"
    STOPPED = "stopped"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def describe_exit(process: multiprocessing.process.BaseProcess) -> str:
    """A dead process's end in words."""
    code = process.exitcode
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class ActorRecord:
    """The supervision state of one actor slot (``<kind>-<index>``); see the module's table.

    ``clock`` gives seconds for intervals (monotonic), ``wall`` the time shown as ``since``.
    """

    def __init__(self, kind: str, index: int, base_backoff: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = _utcnow) -> None:
        self.kind = kind
        self.index = index
        self.base_backoff = base_backoff
        self._clock = clock
        self._wall = wall
        self.state = ActorState.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        """Starts after an unexpected death, over the record's life."""
        self.last_exit: str | None = None
        self.since = wall()
        self._changed_at = clock()
        self._deaths: deque[float] = deque()

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    def _enter(self, state: ActorState) -> None:
        if state is not self.state:
            self.state = state
            self.since = self._wall()
        self._changed_at = self._clock()

    def recent_deaths(self) -> int:
        """Deaths within the window (older ones are forgotten)."""
        horizon = self._clock() - FAILING_WINDOW
        while self._deaths and self._deaths[0] < horizon:
            self._deaths.popleft()
        return len(self._deaths)

    def backoff(self) -> float:
        """Seconds between the last death and the restart."""
        deaths = self.recent_deaths()
        if deaths == 0:
            return 0.0
        return min(self.base_backoff * 2 ** (deaths - 1), MAX_BACKOFF)

    def started(self, pid: int) -> None:
        """The actor's process was started: stopped/backoff -> starting; failing stays failing
        until the process proves itself (:meth:`tick`)."""
        if self.state in (ActorState.BACKOFF, ActorState.FAILING):
            self.restarts += 1
        self.pid = pid
        self._enter(ActorState.FAILING if self.state is ActorState.FAILING
                    else ActorState.STARTING)

    def tick(self) -> bool:
        """Time passes: starting, or a restart while failing, -> running once the process has
        been up :data:`START_SECONDS`. True when the state changed."""
        if (self.pid is not None and self.state in (ActorState.STARTING, ActorState.FAILING)
                and self._clock() - self._changed_at >= START_SECONDS):
            self._enter(ActorState.RUNNING)
            return True
        return False

    def exited(self, description: str) -> ActorState:
        """The process died unexpectedly -> backoff, or failing when it died too often."""
        self._deaths.append(self._clock())
        self.pid = None
        self.last_exit = description
        failing = self.recent_deaths() > FAILING_RESTARTS
        self._enter(ActorState.FAILING if failing else ActorState.BACKOFF)
        return self.state

    def restart_due(self) -> bool:
        """True when the actor waits for a restart and its delay has passed."""
        return (self.pid is None and self.state in (ActorState.BACKOFF, ActorState.FAILING)
                and self._clock() - self._changed_at >= self.backoff())

    def stopped(self) -> None:
        """The Monitor stopped the actor on purpose."""
        self.pid = None
        self._enter(ActorState.STOPPED)

    def as_document(self) -> dict[str, Any]:
        """The entry of the daemon document's ``actors`` list."""
        return {"name": self.name, "kind": self.kind, "index": self.index,
                "state": self.state.value, "pid": self.pid, "restarts": self.restarts,
                "last_exit": self.last_exit, "since": self.since}


Spawn = Callable[[str, int], multiprocessing.process.BaseProcess]
"""Starts the process of actor ``(kind, index)`` and returns it (already started)."""
OnDeath = Callable[[str, int, int], None]
"""Called with ``(kind, index, pid)`` when an actor died unexpectedly (to give back its jobs)."""


@dataclass
class _Slot:
    record: ActorRecord
    process: multiprocessing.process.BaseProcess | None = None


class Supervisor:
    """Runs the actor pools: starts them, restarts the dead as their records decide, stops them
    warmly. OS work goes through ``spawn`` and the processes it returns."""

    def __init__(self, spawn: Spawn, on_death: OnDeath, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = _utcnow) -> None:
        self._spawn = spawn
        self._on_death = on_death
        self._clock = clock
        self._wall = wall
        self._slots: dict[tuple[str, int], _Slot] = {}

    def start(self, sizes: Sequence[tuple[str, int]], base_backoff: float) -> None:
        """Start every pool (``(kind, size)`` pairs); counts from earlier runs are kept."""
        wanted = {(kind, index) for kind, size in sizes for index in range(size)}
        for key in [k for k in self._slots if k not in wanted]:
            del self._slots[key]
        for kind, size in sizes:
            for index in range(size):
                slot = self._slots.get((kind, index))
                if slot is None:
                    slot = self._slots[(kind, index)] = _Slot(ActorRecord(
                        kind, index, base_backoff, clock=self._clock, wall=self._wall))
                slot.record.base_backoff = base_backoff
                self._start(slot)

    def _start(self, slot: _Slot) -> None:
        record = slot.record
        slot.process = self._spawn(record.kind, record.index)
        record.started(slot.process.pid or 0)

    def check(self) -> tuple[list[str], bool]:
        """Reap dead actors, restart those whose delay passed, advance the records. Returns the
        kinds of the actors restarted (their pools have work to look at) and whether any record
        changed. Call often: it is cheap."""
        restarted: list[str] = []
        changed = False
        for slot in self._slots.values():
            record, process = slot.record, slot.process
            if process is not None and not process.is_alive():
                pid = process.pid or 0
                description = describe_exit(process)
                process.close()
                slot.process = None
                state = record.exited(description)
                level = logging.CRITICAL if state is ActorState.FAILING else logging.ERROR
                log.log(level, "%s-actor %d (pid %d) terminated unexpectedly: it %s; %s",
                        record.kind, record.index, pid, description,
                        f"failing ({record.recent_deaths()} deaths within "
                        f"{FAILING_WINDOW:.0f}s), restarting in {record.backoff():.1f}s"
                        if state is ActorState.FAILING
                        else f"restarting in {record.backoff():.1f}s")
                changed = True
                self._on_death(record.kind, record.index, pid)
            if slot.process is None and record.restart_due():
                self._start(slot)
                restarted.append(record.kind)
                changed = True
            changed = record.tick() or changed
        return restarted, changed

    def stop(self, timeout: float = STOP_TIMEOUT, wake: Callable[[], None] = lambda: None
             ) -> None:
        """Warm stop: TERM every actor, ``wake`` the sleepers, wait up to ``timeout``, KILL the
        rest. Every record ends ``stopped``."""
        alive = [slot.process for slot in self._slots.values() if slot.process is not None]
        for process in alive:
            if process.is_alive():
                process.terminate()  # SIGTERM: finish the batch in hand
        wake()
        deadline = self._clock() + timeout
        for process in alive:
            process.join(max(0.0, deadline - self._clock()))
            if process.is_alive():
                log.warning("%s did not stop in %.0fs: killing it", process.name, timeout)
                process.kill()
                process.join()
        for slot in self._slots.values():
            slot.process = None
            slot.record.stopped()

    def records(self) -> list[ActorRecord]:
        return [slot.record for slot in self._slots.values()]

    def table(self) -> list[dict[str, Any]]:
        """The ``actors`` field of the daemon document."""
        return [record.as_document() for record in self.records()]

    def size(self, kind: str) -> int:
        return sum(1 for k, _ in self._slots if k == kind)
