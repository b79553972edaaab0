"""Which waiting jobs the Submit actor claims: a full system's backlog is left alone (offered one
job at a time, not a batch put back again and again), and jobs routed to a system the
configuration no longer has are routed again."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable

from tests.conftest import Engine, write_config
from tests.support.local_slots import BUSY_SYSTEM, hold_local_slot

LOCAL = """\
[systems]
[[local]]
class = local
slots = 2
"""
BUSY = textwrap.dedent(BUSY_SYSTEM)  # a one-slot Local system, and the route of project busy
WAITING = 30


def test_a_full_systems_backlog_is_offered_one_job_at_a_time_and_runs_once_it_has_room(
        engine_factory: Callable[..., Engine]) -> None:
    engine = engine_factory(LOCAL + BUSY, start=False)
    slot = hold_local_slot(engine.state_dir, "busy")
    engine.start()
    waiting = [engine.submit("true", project="busy") for _ in range(WAITING)]
    engine.wait_for(lambda: engine.store.jobs.count_documents(
        {"_id": {"$in": waiting}, "state": "to be submitted", "system": "busy"}) == WAITING,
        what="the busy jobs to wait, routed to busy")
    others = [engine.submit("true") for _ in range(5)]
    assert {d["state"] for d in engine.wait_ended(others)} == {"finished"}

    # Over 4 poll intervals, busy is offered a job per interval, not its whole backlog.
    before = {d["_id"]: d["updated_at"] for d in engine.store.jobs.find({"_id": {"$in": waiting}})}
    time.sleep(2.0)
    after = {d["_id"]: d["updated_at"] for d in engine.store.jobs.find({"_id": {"$in": waiting}})}
    touched = [job for job in waiting if after[job] != before[job]]
    assert 1 <= len(touched) <= 8, touched
    assert engine.store.jobs.count_documents(
        {"_id": {"$in": waiting}, "state": {"$in": ["to be submitted", "submitting"]}}) == WAITING

    os.close(slot)  # room again: the backlog runs, each job once
    docs = engine.wait_ended(waiting, timeout=120)
    assert {d["state"] for d in docs} == {"finished"}
    assert all(d["system"] == "busy" for d in docs)


def test_jobs_routed_to_a_system_no_longer_configured_are_routed_again(
        engine_factory: Callable[..., Engine]) -> None:
    engine = engine_factory(LOCAL + BUSY, start=False)
    slot = hold_local_slot(engine.state_dir, "busy")
    engine.start()
    waiting = [engine.submit("true", project="busy") for _ in range(3)]
    engine.wait_for(lambda: engine.store.jobs.count_documents(
        {"_id": {"$in": waiting}, "system": "busy"}) == 3, what="the jobs to be routed to busy")
    engine.stop()
    os.close(slot)

    write_config(engine.config_path, engine.state_dir, engine.mongo_uri, engine.database,
                 LOCAL)  # busy and its route are gone
    engine.start()
    docs = engine.wait_ended(waiting)
    assert {d["state"] for d in docs} == {"finished"}
    assert {(d["system"], d["route"]) for d in docs} == {("local", "default")}
