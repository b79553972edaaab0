"""Supervision of the actor pools: every edge of an actor's state machine on a fake clock, the
growing and capped backoff, the failing state, and the Supervisor driving fake processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from execution_engine.monitor.supervision import (
    FAILING_RESTARTS,
    FAILING_WINDOW,
    MAX_BACKOFF,
    START_SECONDS,
    ActorRecord,
    ActorState,
    Supervisor,
)


class Clock:
    """Monotonic seconds and wall time, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=self.now)


def record(clock: Clock, base: float = 1.0) -> ActorRecord:
    return ActorRecord("submit", 0, base, clock=clock, wall=clock.wall)


def crash(rec: ActorRecord, clock: Clock, pid: int = 10) -> ActorState:
    """Restart ``rec`` as soon as its backoff allows, and let it die at once."""
    clock.now += rec.backoff()
    assert rec.restart_due()
    rec.started(pid)
    return rec.exited("exited with status 1")


# ---------------------------------------------------------------------- edges, one by one
def test_stopped_to_starting_on_start() -> None:
    clock = Clock()
    rec = record(clock)
    assert rec.state is ActorState.STOPPED
    rec.started(42)
    assert (rec.state, rec.pid, rec.restarts) == (ActorState.STARTING, 42, 0)
    assert rec.since == clock.wall()


def test_starting_to_running_after_the_start_seconds() -> None:
    clock = Clock()
    rec = record(clock)
    rec.started(42)
    clock.now += START_SECONDS - 0.1
    assert not rec.tick()
    assert rec.state is ActorState.STARTING
    clock.now += 0.1
    assert rec.tick()
    assert rec.state is ActorState.RUNNING
    assert rec.since == clock.wall()
    assert not rec.tick()  # no change the second time


@pytest.mark.parametrize("up_for", [0.0, START_SECONDS + 1])
def test_starting_or_running_to_backoff_on_a_death(up_for: float) -> None:
    clock = Clock()
    rec = record(clock)
    rec.started(42)
    clock.now += up_for
    rec.tick()
    assert rec.exited("was killed by signal 9 (SIGKILL)") is ActorState.BACKOFF
    assert rec.pid is None
    assert rec.last_exit == "was killed by signal 9 (SIGKILL)"


def test_backoff_to_starting_once_the_delay_passed() -> None:
    clock = Clock()
    rec = record(clock, base=2.0)
    rec.started(42)
    rec.exited("exited with status 1")
    assert rec.backoff() == 2.0
    clock.now += 1.9
    assert not rec.restart_due()
    clock.now += 0.1
    assert rec.restart_due()
    rec.started(43)
    assert (rec.state, rec.pid, rec.restarts) == (ActorState.STARTING, 43, 1)


def test_the_backoff_grows_and_is_capped() -> None:
    clock = Clock()
    rec = record(clock, base=1.0)
    rec.started(1)
    delays = []
    for _ in range(8):
        rec.exited("exited with status 1")
        delays.append(rec.backoff())
        clock.now += rec.backoff()
        rec.started(1)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]


def test_to_failing_after_more_than_the_limit_of_deaths_in_the_window() -> None:
    clock = Clock()
    rec = record(clock, base=0.5)
    rec.started(1)
    states = [rec.exited("exited with status 1")]
    for _ in range(FAILING_RESTARTS):
        states.append(crash(rec, clock))
    assert states == [ActorState.BACKOFF] * FAILING_RESTARTS + [ActorState.FAILING]
    assert rec.restarts == FAILING_RESTARTS
    assert rec.recent_deaths() == FAILING_RESTARTS + 1


def failing_record(clock: Clock) -> ActorRecord:
    rec = record(clock, base=0.5)
    rec.started(1)
    rec.exited("exited with status 1")
    while rec.state is not ActorState.FAILING:
        crash(rec, clock)
    return rec


def test_failing_restarts_at_its_delay_and_stays_failing_while_it_proves_itself() -> None:
    clock = Clock()
    rec = failing_record(clock)
    restarts = rec.restarts
    clock.now += rec.backoff() - 0.1
    assert not rec.restart_due()
    clock.now += 0.1
    assert rec.restart_due()
    rec.started(77)
    assert (rec.state, rec.pid, rec.restarts) == (ActorState.FAILING, 77, restarts + 1)
    assert not rec.tick()  # still in its first seconds: still failing


def test_failing_to_failing_when_the_restart_dies_again() -> None:
    clock = Clock()
    rec = failing_record(clock)
    assert crash(rec, clock) is ActorState.FAILING


def test_failing_to_running_when_a_restart_stays_up() -> None:
    clock = Clock()
    rec = failing_record(clock)
    clock.now += rec.backoff()
    rec.started(77)
    clock.now += START_SECONDS
    assert rec.tick()
    assert rec.state is ActorState.RUNNING


def test_deaths_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    rec = failing_record(clock)
    clock.now += rec.backoff()
    rec.started(77)
    clock.now += FAILING_WINDOW + 1
    rec.tick()
    assert rec.recent_deaths() == 0
    assert rec.exited("exited with status 1") is ActorState.BACKOFF
    assert rec.backoff() == 0.5  # back to the base delay


@pytest.mark.parametrize("setup", ["starting", "running", "backoff", "failing"])
def test_any_state_to_stopped(setup: str) -> None:
    clock = Clock()
    rec = failing_record(clock) if setup == "failing" else record(clock)
    if setup != "failing":
        rec.started(5)
    if setup == "running":
        clock.now += START_SECONDS
        rec.tick()
    if setup == "backoff":
        rec.exited("exited with status 1")
    assert rec.state.value == setup
    rec.stopped()
    assert (rec.state, rec.pid) == (ActorState.STOPPED, None)
    assert not rec.restart_due()


def test_the_document_entry() -> None:
    clock = Clock()
    rec = record(clock)
    rec.started(42)
    assert rec.as_document() == {
        "name": "submit-0", "kind": "submit", "index": 0, "state": "starting", "pid": 42,
        "restarts": 0, "last_exit": None, "since": clock.wall()}


# ---------------------------------------------------------------------- the Supervisor
class FakeProcess:
    """What the Supervisor uses of a multiprocessing process."""

    next_pid = 100

    def __init__(self, name: str) -> None:
        self.name = name
        FakeProcess.next_pid += 1
        self.pid: int | None = FakeProcess.next_pid
        self.exitcode: int | None = None
        self.closed = False

    def is_alive(self) -> bool:
        return self.exitcode is None

    def close(self) -> None:
        self.closed = True

    def join(self, timeout: float | None = None) -> None:
        pass

    def terminate(self) -> None:
        self.exitcode = -15

    def kill(self) -> None:
        self.exitcode = -9


def make_supervisor(clock: Clock) -> tuple[Supervisor, dict[tuple[str, int], FakeProcess],
                                             list[tuple[str, int, int]]]:
    current: dict[tuple[str, int], FakeProcess] = {}
    deaths: list[tuple[str, int, int]] = []

    def spawn(kind: str, index: int) -> Any:
        current[(kind, index)] = FakeProcess(f"{kind}-{index}")
        return current[(kind, index)]

    supervisor = Supervisor(spawn, lambda k, i, p: deaths.append((k, i, p)), clock=clock,
                            wall=clock.wall)
    return supervisor, current, deaths


def test_the_supervisor_restarts_a_dead_actor_after_its_backoff() -> None:
    clock = Clock()
    supervisor, current, deaths = make_supervisor(clock)
    supervisor.start([("building", 1), ("submit", 2)], base_backoff=1.0)
    assert [r["state"] for r in supervisor.table()] == ["starting"] * 3
    victim = current[("submit", 1)]
    victim.exitcode = 1
    restarted, changed = supervisor.check()
    assert (restarted, changed) == ([], True)
    assert deaths == [("submit", 1, victim.pid)]
    assert victim.closed
    by_name = {r["name"]: r for r in supervisor.table()}
    assert by_name["submit-1"]["state"] == "backoff"
    assert by_name["submit-1"]["last_exit"] == "exited with status 1"
    clock.now += 1.0
    restarted, changed = supervisor.check()
    assert (restarted, changed) == (["submit"], True)
    assert current[("submit", 1)] is not victim
    by_name = {r["name"]: r for r in supervisor.table()}
    assert (by_name["submit-1"]["state"], by_name["submit-1"]["restarts"]) == ("starting", 1)
    assert by_name["submit-1"]["pid"] == current[("submit", 1)].pid
    clock.now += START_SECONDS
    assert supervisor.check() == ([], True)
    assert {r["state"] for r in supervisor.table()} == {"running"}
    assert supervisor.check() == ([], False)


def test_the_supervisor_shows_a_crash_loop_as_failing_and_leaves_the_others_alone() -> None:
    clock = Clock()
    supervisor, current, _ = make_supervisor(clock)
    supervisor.start([("building", 1), ("submit", 1)], base_backoff=0.1)
    for _ in range(FAILING_RESTARTS + 1):
        current[("submit", 0)].exitcode = 1
        supervisor.check()
        clock.now += MAX_BACKOFF
        supervisor.check()
    by_name = {r["name"]: r for r in supervisor.table()}
    assert by_name["submit-0"]["state"] == "failing"
    assert by_name["submit-0"]["restarts"] == FAILING_RESTARTS + 1
    assert by_name["building-0"]["state"] == "running"
    assert by_name["building-0"]["restarts"] == 0


def test_a_stop_and_a_new_start_keep_the_counts() -> None:
    clock = Clock()
    supervisor, current, _ = make_supervisor(clock)
    supervisor.start([("submit", 1)], base_backoff=0.0)
    current[("submit", 0)].exitcode = 1
    supervisor.check()
    supervisor.check()
    alive = current[("submit", 0)]
    supervisor.stop(timeout=0.0)
    assert alive.exitcode == -15
    assert [(r["state"], r["pid"]) for r in supervisor.table()] == [("stopped", None)]
    supervisor.start([("submit", 2)], base_backoff=0.0)
    table = supervisor.table()
    assert [(r["name"], r["state"], r["restarts"]) for r in table] == [
        ("submit-0", "starting", 1), ("submit-1", "starting", 0)]
