"""Client requests on a running engine: hold and release, and requests that are not booleans."""

from __future__ import annotations

import time
from pathlib import Path

from execution_engine.store import JobStore
from tests.conftest import Engine


def test_a_hold_on_a_system_that_cannot_hold_says_so(engine: Engine) -> None:
    job = engine.submit("sleep", "30")
    engine.wait_for(lambda: (engine.store.get(job) or {}).get("state") == "running")
    engine.store.jobs.update_one({"_id": job}, {"$set": {"hold_requested": True}})
    engine.wait_for(lambda: "hold" in (engine.store.get(job) or {}))
    doc = engine.store.get(job)
    assert doc is not None and doc["state"] == "running"
    assert doc["hold"]["held"] is False and "cannot hold" in doc["hold"]["error"]
    engine.store.request_cancel(job)
    (ended,) = engine.wait_ended([job])
    assert ended["state"] == "killed" and ended["reason"] == "cancelled"


def test_requests_that_are_not_booleans_are_refused_and_recorded(engine: Engine) -> None:
    store: JobStore = engine.store
    job = engine.submit("sleep", "30")
    engine.wait_for(lambda: (store.get(job) or {}).get("state") == "running")
    store.jobs.update_one({"_id": job}, {"$set": {"cancel_requested": "yes"}})
    engine.wait_for(lambda: "cancel_requested" not in (store.get(job) or {"cancel_requested": 1}))
    doc = store.get(job)
    assert doc is not None and doc["state"] == "running"
    assert "refused cancel_requested 'yes'" in doc["history"][-1]["message"]
    store.request_cancel(job)
    (ended,) = engine.wait_ended([job])
    assert ended["state"] == "killed"


def test_a_client_rewrite_of_an_ended_job_runs_nothing_again(engine: Engine) -> None:
    job = engine.submit("sh", "-c", "echo ran >> count")
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "finished"
    engine.store.jobs.update_one({"_id": job}, {"$set": {"state": "to be built"}})
    engine.wait_for(lambda: (engine.store.get(job) or {}).get("state") == "finished")
    again = engine.store.get(job)
    assert again is not None
    assert "refused a client write of state 'to be built'" in again["history"][-1]["message"]
    time.sleep(1)  # a rerun would have started by now
    assert (Path(doc["job_dir"]) / "count").read_text() == "ran\n"
    assert (engine.store.get(job) or {}).get("state") == "finished"
