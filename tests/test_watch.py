"""The burst watch: when the Monitor stops reading the change stream, and when it reads it again;
and a daemon going through a burst: jobs, cancellations and bad documents during the polling."""

from __future__ import annotations

import time
from collections.abc import Callable

from execution_engine.watch import BURST_EVENTS, MAX_BURST, QUIET, BurstWatch
from tests.conftest import Engine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_so_many_events_within_a_second() -> None:
    clock = Clock()
    watch = BurstWatch(clock)
    for _ in range(3):  # spread over seconds: never a burst
        for _ in range(BURST_EVENTS - 1):
            assert not watch.on_event()
        clock.now += 1.0
    assert not watch.bursting
    started = [watch.on_event() for _ in range(BURST_EVENTS)]
    assert started == [False] * (BURST_EVENTS - 1) + [True]
    assert watch.bursting


def test_a_burst_ends_when_the_pipeline_stays_empty_or_after_the_longest_burst() -> None:
    clock = Clock()
    watch = BurstWatch(clock)
    for _ in range(BURST_EVENTS):
        watch.on_event()
    clock.now += QUIET * 0.9
    assert not watch.on_poll(pipeline_busy=False)
    clock.now += QUIET * 0.2
    assert watch.on_poll(pipeline_busy=False)
    assert not watch.bursting

    for _ in range(BURST_EVENTS):
        watch.on_event()
    started = clock.now
    while clock.now < started + MAX_BURST - 0.1:
        clock.now += 0.05
        assert not watch.on_poll(pipeline_busy=True)
    clock.now += 0.2
    assert watch.on_poll(pipeline_busy=True)
    assert not watch.bursting

    for _ in range(BURST_EVENTS):
        watch.on_event()
    watch.end()  # the database stopped answering the polls
    assert not watch.bursting
    assert not watch.on_event()  # counting starts afresh


def test_during_a_burst_jobs_cancellations_and_bad_documents_are_all_handled(
        engine_factory: Callable[..., Engine]) -> None:
    engine = engine_factory("[systems]\n[[local]]\nclass = local\nslots = 2\nkill_grace = 1\n")
    burst = engine.store.jobs.insert_many(
        [{"state": "to be built", "command": ["sleep", "0.05"]} for _ in range(300)]
    ).inserted_ids
    engine.wait_for(lambda: "burst: polling" in engine.log_file.read_text(),
                    what="the Monitor to poll during the burst")
    # While the Monitor polls: a long job, cancelled once it runs; a cancelled waiting job; a
    # job with a bad state.
    long = engine.submit("sleep", "300")
    waiting = burst[-1]
    engine.store.request_cancel(waiting)
    bad = engine.insert({"state": "queued", "command": ["true"]})
    engine.wait_for(lambda: engine.store.get(long)["state"] == "running", timeout=60,
                    what="the long job to run")
    engine.store.request_cancel(long)
    docs = engine.wait_ended([*burst, long, bad], timeout=120)
    states = {d["_id"]: d["state"] for d in docs}
    assert states.pop(waiting) == "killed"
    assert states.pop(long) == "killed"
    assert states.pop(bad) == "error"
    assert set(states.values()) == {"finished"}
    engine.wait_for(lambda: "burst over" in engine.log_file.read_text(),
                    what="the Monitor to read the stream again")

    # The stream again: a new job is seen at once.
    began = time.monotonic()
    (doc,) = engine.wait_ended([engine.submit("true")])
    assert doc["state"] == "finished"
    assert time.monotonic() - began < 5
