"""The burst watch: when the Monitor stops reading the change stream, and when it reads it again;
a daemon going through a burst: jobs, cancellations and bad documents during the polling; and
the change watcher's view of clients' writes of ``state``."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import pytest

from execution_engine.apps.masters import SplitFollower
from execution_engine.bell import Bell
from execution_engine.monitor.watcher import (
    BURST_PIPELINE,
    STREAM_PIPELINE,
    ChangeWatcher,
    client_wrote_state,
)
from execution_engine.store import JobStore
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
    # job with a bad state; a waiting job a client says is finished.
    long = engine.submit("sleep", "300")
    waiting = burst[-1]
    engine.store.request_cancel(waiting)
    rewritten = burst[-2]
    engine.wait_for(lambda: (engine.store.get(rewritten) or {}).get("engine_state")
                    == "to be submitted", what="a job of the burst to wait for a slot")
    engine.store.jobs.update_one({"_id": rewritten}, {"$set": {"state": "finished"}})
    bad = engine.insert({"state": "queued", "command": ["true"]})
    engine.wait_for(lambda: (engine.store.get(long) or {}).get("state") == "running", timeout=60,
                    what="the long job to run")
    engine.store.request_cancel(long)
    docs = engine.wait_ended([*burst, long, bad], timeout=120)
    states = {d["_id"]: d["state"] for d in docs}
    # The client's write was undone during the burst, and the job ran.
    (again,) = [d for d in docs if d["_id"] == rewritten]
    assert again.get("refused_writes") and again["exit_code"] == 0, again
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


# ---------------------------------------------------------------------- clients' state writes
def stream_events(store: JobStore, writes: Callable[[], None],
                  pipeline: list[dict[str, Any]] = STREAM_PIPELINE) -> list[dict[str, Any]]:
    """The events the Monitor's ``pipeline`` lets through while ``writes`` runs."""
    with store.jobs.watch(pipeline, max_await_time_ms=100) as stream:
        writes()
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            change = stream.try_next()
            if change is None and events:
                break
            if change is not None:
                events.append(change)
        return events


def test_the_stream_shows_clients_state_writes_and_not_the_engines_own(store: JobStore
                                                                        ) -> None:
    job = store.jobs.insert_one({"state": "to be built", "command": ["true"]}).inserted_id
    forged = {"state": "finished", "command": ["true"]}

    def writes() -> None:
        # The engine's own hand-on (state with engine_state): not in the stream.
        store.jobs.update_one({"_id": job}, {"$set": {"state": "building",
                                                      "engine_state": "building"}})
        store.jobs.update_one({"_id": job}, {"$set": {"state": "running"}})  # a client's
        store.jobs.update_one({"_id": job}, {"$unset": {"state": ""}})  # a client's
        store.jobs.insert_one(forged)

    events = stream_events(store, writes)
    seen = [(e["operationType"], client_wrote_state(e)) for e in events]
    assert seen == [("update", True), ("update", True), ("insert", True)]
    assert all(e["documentKey"]["_id"] in (job, forged["_id"]) for e in events)


def test_the_burst_watch_shows_only_the_writes_no_engine_makes(store: JobStore) -> None:
    """During a burst the watch lets through clients' writes of state and forged inserts, never
    the burst's own inserts or the engine's writes (which are nearly all of a burst)."""
    job = store.jobs.insert_one({"state": "to be built", "command": ["true"]}).inserted_id
    ended_by_client = {"state": "finished", "command": ["true"]}
    forged = {"state": "running", "engine_state": "running", "command": ["true"]}
    replaced = store.jobs.insert_one({"state": "to be built", "command": ["true"]}).inserted_id

    def writes() -> None:
        store.jobs.insert_many([{"state": "to be built", "command": ["true"]},
                                {"command": ["true"]}])  # a burst's own
        store.jobs.update_one({"_id": job}, {"$set": {"state": "building",
                                                      "engine_state": "building"}})
        store.jobs.update_one({"_id": job}, {"$set": {"cancel_requested": True}})
        store.jobs.update_one({"_id": job}, {"$set": {"state": "running"}})  # a client's
        store.jobs.update_one({"_id": job}, {"$unset": {"state": ""}})  # a client's
        store.jobs.insert_one(ended_by_client)
        store.jobs.insert_one(forged)
        store.jobs.replace_one({"_id": replaced}, {"state": "to be built", "command": ["id"]})

    events = stream_events(store, writes, BURST_PIPELINE)
    seen = [(e["operationType"], e["documentKey"]["_id"]) for e in events]
    assert seen == [("update", job), ("update", job), ("insert", ended_by_client["_id"]),
                    ("insert", forged["_id"]), ("replace", replaced)]
    assert [client_wrote_state(e) for e in events] == [True, True, True, False, True]


def test_what_counts_as_a_clients_state_write() -> None:
    def insert(**doc: Any) -> dict[str, Any]:
        return {"operationType": "insert", "fullDocument": doc}

    def update(fields: dict[str, Any], removed: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"operationType": "update",
                "updateDescription": {"updatedFields": fields, "removedFields": list(removed)}}

    assert not client_wrote_state(insert(command=["true"]))
    assert not client_wrote_state(insert(state="to be built"))
    assert client_wrote_state(insert(state="finished"))
    assert client_wrote_state(insert(state={"$set": 1}))
    assert client_wrote_state(insert(state=["to be built"]))
    assert client_wrote_state({"operationType": "replace", "fullDocument": {}})
    assert client_wrote_state(update({"state": "running"}))
    assert not client_wrote_state(update({"state": "running", "engine_state": "running"}))
    assert not client_wrote_state(update({"cancel_requested": True}))
    assert client_wrote_state(update({}, removed=("state",)))


class RecordingStore:
    """The store calls a watcher makes, recorded (no database)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., int]:
        def call(*args: Any, **kwargs: Any) -> int:
            self.calls.append((name, kwargs))
            return 0
        return call


def recording_watcher(store: RecordingStore) -> tuple[ChangeWatcher, dict[str, Bell]]:
    """A watcher on ``store`` (its calls cleared), and its bells."""
    bells = {kind: Bell(multiprocessing.get_context("spawn"))
             for kind in ("building", "submit", "status", "notification")}
    follower = SplitFollower("test", min_gap=3600)
    follower.tick(store)  # type: ignore[arg-type] # its first pass now; none later

    def run(action: Callable[[], object]) -> None:
        action()

    watcher = ChangeWatcher(store, bells, follower,  # type: ignore[arg-type]
                            poll_interval=0.1, guard=run, stopping=lambda: False)
    store.calls.clear()
    return watcher, bells


def test_the_watcher_asks_the_store_to_restore_states_after_a_clients_write() -> None:
    store = RecordingStore()
    watcher, bells = recording_watcher(store)

    watcher.on_change({"operationType": "update", "documentKey": {"_id": 7},
                       "updateDescription": {"updatedFields": {"state": "running",
                                                               "engine_state": "running"}}})
    assert [name for name, _ in store.calls] == []
    watcher.on_change({"operationType": "update", "documentKey": {"_id": 7},
                       "updateDescription": {"updatedFields": {"state": "running"}}})
    assert store.calls == [("enforce_engine_states", {"by": "monitor", "job_ids": [7]})]
    store.calls.clear()
    watcher.on_change({"operationType": "insert", "documentKey": {"_id": 8},
                       "fullDocument": {"state": "finished"}})
    assert store.calls[0] == ("enforce_engine_states", {"by": "monitor", "job_ids": [8]})
    assert bells["notification"].wait(0)


class FakeStream:
    """A change stream holding ``events`` (no database)."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = list(events)
        self.alive = True
        self.resume_token = None

    def try_next(self) -> dict[str, Any] | None:
        return self.events.pop(0) if self.events else None

    def close(self) -> None:
        self.alive = False


class FakeJobs:
    def watch(self, *args: Any, **kwargs: Any) -> FakeStream:
        return FakeStream([])


@pytest.mark.parametrize("watch_lost", [False, True])
def test_after_a_burst_only_what_the_burst_watch_saw_is_restored(watch_lost: bool) -> None:
    """The writes the burst's watch showed are acted on, job by job; every live job is swept
    only when the watch was lost during the burst (what clients wrote was then seen by none)."""
    store = RecordingStore()
    store.jobs = FakeJobs()  # type: ignore[attr-defined]
    watcher, _ = recording_watcher(store)
    watcher.burst_watch = FakeStream([
        {"operationType": "update", "documentKey": {"_id": 9},
         "updateDescription": {"updatedFields": {"state": "finished"}}},
        {"operationType": "insert", "documentKey": {"_id": 10},
         "fullDocument": {"state": "running", "engine_state": "running"}},
    ])
    watcher.after_burst = True
    watcher.burst_watch_lost = watch_lost

    watcher.open()

    full_sweep = ("enforce_engine_states", {"by": "monitor"})
    assert store.calls[:2] == [("enforce_engine_states", {"by": "monitor", "job_ids": [9]}),
                               ("refuse_forged_insert", {"by": "monitor"})]
    assert (full_sweep in store.calls) is watch_lost
    assert ("fail_unknown_states", {"by": "monitor"}) in store.calls
    assert watcher.burst_watch is None and watcher.stream is not None
    assert not watcher.burst_watch_lost
