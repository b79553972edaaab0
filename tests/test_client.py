"""The client library (execution_engine.client) against a real daemon and a real mongod."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from execution_engine import Client, Job
from execution_engine.apps.definition import load_definition
from execution_engine.apps.registry import AppRegistry, UnknownApp
from execution_engine.client import ENDED, JobNotEnded, StateChange, UnknownJob
from execution_engine.daemon import is_execd
from execution_engine.errors import NotRunning
from tests.conftest import ROOT, Engine

APPS = ROOT / "tests" / "apps"


@pytest.fixture
def client(engine: Engine) -> Any:
    with Client(engine.mongo_uri, database=engine.database) as made:
        yield made


def stored(engine: Engine, job_id: Any) -> dict[str, Any]:
    doc = engine.store.get(job_id)
    assert doc is not None
    return doc


def states_in_history(job: Job) -> list[str | None]:
    return [entry.state for entry in job.status.history]


def is_subsequence(seen: list[Any], full: list[Any]) -> bool:
    rest = iter(full)
    return all(any(item == other for other in rest) for item in seen)


# ---------------------------------------------------------------------- submit, wait, status
def test_submit_wait_and_status_of_a_command(client: Client, engine: Engine) -> None:
    job = client.submit(["sh", "-c", "echo out; echo err >&2; echo 7 > seven.txt"],
                        name="three files", owner="alice", project="p1",
                        environment={"X": "1"}, requirements={"cores": 1}, notify=False,
                        metadata={"from": "test"})
    doc = stored(engine, job.id)
    assert doc["command"][0] == "sh" and doc["owner"] == "alice"
    assert doc["environment"] == {"X": "1"} and doc["metadata"] == {"from": "test"}
    assert doc["notify"] is False
    assert job.wait(timeout=60) == "finished"
    status = job.status
    assert status.state == "finished" and status.ended and status.exit_code == 0
    assert status.reason == "completed"
    assert status.history[-1].state == "finished"
    assert all(entry.at is not None for entry in status.history)
    assert job.document["state"] == "finished"  # wait leaves the ended document
    paths = sorted(output.path for output in job.outputs())
    assert paths == ["job.stderr", "job.stdout", "seven.txt"]


def test_a_failing_command_ends_in_error_with_its_exit_code(client: Client) -> None:
    job = client.submit(["sh", "-c", "exit 3"], notify=False)
    assert job.wait(timeout=60) == "error"
    status = job.status
    assert status.exit_code == 3 and status.message and status.reason == "nonzero_exit"


def test_wait_returns_none_at_its_timeout_and_cancel_ends_the_job(client: Client) -> None:
    job = client.submit(["sleep", "300"], notify=False)
    started = time.monotonic()
    assert job.wait(timeout=1.0, poll_interval=0.2) is None
    assert 0.9 < time.monotonic() - started < 10
    assert job.status.state not in ENDED
    asked = job.cancel()
    assert asked.cancel_requested and not asked.ended
    assert job.wait(timeout=60) == "killed"
    status = job.status
    assert status.reason == "cancelled" and status.cancel_requested
    again = job.cancel()  # on an ended job: nothing changes
    assert again.state == "killed"


def test_submit_refuses_wrong_calls_before_inserting(client: Client, engine: Engine) -> None:
    with pytest.raises(ValueError, match="either a command or an app"):
        client.submit()
    with pytest.raises(ValueError, match="either a command or an app"):
        client.submit(["true"], app="square")
    with pytest.raises(ValueError, match="non-empty list"):
        client.submit("echo hi")
    with pytest.raises(ValueError, match="application jobs only"):
        client.submit(["true"], inputs={"n": 1})
    with pytest.raises(UnknownApp, match="no application 'nothing'"):
        client.submit(app="nothing")
    assert engine.store.counts() == {}


def test_an_unknown_job_is_refused(client: Client) -> None:
    with pytest.raises(UnknownJob, match="no job nosuchjob"):
        client.job("nosuchjob")
    with pytest.raises(UnknownJob):
        client.jobs(parent="nosuchjob")


# ---------------------------------------------------------------------- hold and release
def test_hold_and_release_write_the_request_fields(client: Client, engine: Engine) -> None:
    job = client.submit(["sleep", "300"], notify=False)
    held = job.hold()
    assert held.hold_requested is True
    assert stored(engine, job.id)["hold_requested"] is True
    released = job.release()
    assert released.hold_requested is False
    assert stored(engine, job.id)["hold_requested"] is False
    assert client.job(job.id).status.hold_requested is False
    job.cancel()
    assert job.wait(timeout=60) == "killed"


def test_hold_and_release_from_the_command_line(engine: Engine) -> None:
    job_id = engine.submit("sleep", "300", notify=False)
    out = engine.cli("hold", str(job_id)).stdout
    assert f"{job_id} hold requested" in out
    assert stored(engine, job_id)["hold_requested"] is True
    assert "hold: " in engine.cli("show", str(job_id)).stdout
    out = engine.cli("release", str(job_id)).stdout
    assert f"{job_id} release requested" in out
    assert stored(engine, job_id)["hold_requested"] is False
    engine.cli("kill", str(job_id))
    engine.wait_ended([job_id])
    assert "already ended (killed)" in engine.cli("hold", str(job_id)).stdout
    missing = engine.cli("release", "nosuchjob", check=False)
    assert missing.returncode == 1 and "no job nosuchjob" in missing.stderr


# ---------------------------------------------------------------------- outputs and fetch
def test_outputs_and_fetch_of_an_application_job(client: Client, engine: Engine,
                                                  tmp_path: Path) -> None:
    AppRegistry(engine.store.db).add(load_definition(APPS / "square"))
    job = client.submit(app="square", inputs={"n": 12}, notify=False)
    with pytest.raises(JobNotEnded):
        job.fetch(tmp_path / "early")
    assert job.outputs() == []  # listed when the job ends
    assert job.wait(timeout=60) == "finished", job.status.message
    (output,) = job.outputs()
    assert output.path == "square.txt" and output.sha256 and output.size
    dest = tmp_path / "dest"
    report = job.fetch(dest, mark=True)
    assert report.fetched == ["square.txt"] and not report.problems
    assert (dest / "square.txt").read_text().strip() == "144"
    marked = stored(engine, job.id)
    assert marked["outputs_fetched_at"] and marked["outputs"][0]["fetched_at"]


def test_a_tampered_output_is_reported_and_not_marked(client: Client, engine: Engine,
                                                      tmp_path: Path) -> None:
    AppRegistry(engine.store.db).add(load_definition(APPS / "square"))
    job = client.submit(app="square", inputs=[{"name": "n", "value": 3}], notify=False)
    assert job.wait(timeout=60) == "finished", job.status.message
    Path(job.document["job_dir"], "square.txt").write_text("not nine\n")
    report = job.fetch(tmp_path / "dest", mark=True)
    assert report.problems and not report.fetched
    assert "outputs_fetched_at" not in stored(engine, job.id)


def test_a_job_without_outputs_fetches_nothing(client: Client, tmp_path: Path) -> None:
    job = client.submit(["true"], notify=False)
    job.wait(timeout=60)
    # Even a command job lists job.stdout/job.stderr; empty the listing to see the edge case.
    client.store.jobs.update_one({"_id": job.id}, {"$set": {"outputs": []}})
    report = job.fetch(tmp_path / "none")
    assert not report.fetched and not report.problems
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------------- listing
def test_jobs_filters_newest_first(client: Client) -> None:
    first = client.submit(["true"], owner="ann", project="a", notify=False)
    second = client.submit(["true"], owner="bob", project="a", notify=False)
    third = client.submit(["false"], owner="ann", project="b", notify=False)
    for job in (first, second, third):
        job.wait(timeout=60)
    assert [j.id for j in client.jobs(owner="ann")] == [third.id, first.id]
    assert [j.id for j in client.jobs(project="a")] == [second.id, first.id]
    assert [j.id for j in client.jobs(state="error")] == [third.id]
    assert [j.id for j in client.jobs(owner="ann", state="finished")] == [first.id]
    assert [j.id for j in client.jobs(limit=2)] == [third.id, second.id]
    assert len(client.jobs(limit=0)) == 3
    assert all("history" not in j.document for j in client.jobs())
    # A value is compared for equality, never taken as an operator.
    assert client.jobs(owner={"$ne": "nobody"}) == []  # type: ignore[arg-type]


# ---------------------------------------------------------------------- watch
def follow(client: Client, job_ids: list[Any], **options: Any) -> list[StateChange]:
    """Every change ``watch`` yields until all of ``job_ids`` ended."""
    seen: list[StateChange] = []
    ended: set[Any] = set()
    for change in client.watch(job_ids, timeout=60, **options):
        seen.append(change)
        if change.ended:
            ended.add(change.job_id)
            if ended == set(job_ids):
                return seen
    raise AssertionError(f"not all ended in 60 s: {seen}")


def test_watch_follows_named_jobs_on_the_change_stream(client: Client) -> None:
    jobs = [client.submit(["sleep", "0.5"], notify=False) for _ in range(3)]
    seen = follow(client, [job.id for job in jobs])
    for job in jobs:
        states = [c.state for c in seen if c.job_id == job.id]
        # The current state first, then every change the engine wrote, in order.
        assert states[0] in ("to be built", "building", "to be submitted", "submitting")
        assert states[-1] == "finished"
        # A stream misses nothing: every state recorded after the first one seen, in order
        # (the stream also sees states the history leaves out).
        history = states_in_history(job)
        after = history[history.index(states[0]) + 1:] if states[0] in history else history
        assert "running" in states and is_subsequence(after, states[1:]), (states, history)
    # Changes from the stream carry the server's time (a first state read may have none).
    assert all(c.at is not None for c in seen if c.state in ("running", "finished"))


def test_watch_polls_when_asked_or_when_there_is_no_change_stream(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    job = client.submit(["sleep", "1"], notify=False)
    seen = follow(client, [job.id], change_stream=False, poll_interval=0.1)
    assert [c.state for c in seen][-1] == "finished"
    assert len({c.state for c in seen}) == len(seen)  # a poll yields a state once

    def no_stream(*args: Any, **kwargs: Any) -> Any:
        raise OperationFailure("The $changeStream stage is only supported on replica sets",
                               code=40573)

    monkeypatch.setattr(client.store, "watch_job_states", no_stream)
    job = client.submit(["sleep", "1"], notify=False)
    assert job.wait(timeout=60, poll_interval=0.1) == "finished"


@pytest.mark.parametrize("change_stream", [True, False])
def test_watch_every_job(client: Client, change_stream: bool) -> None:
    running = client.submit(["sleep", "2"], notify=False)
    for change in client.watch([running.id], timeout=30):
        if change.state == "running":
            break
    seen: list[StateChange] = []
    for change in client.watch(timeout=30, change_stream=change_stream, poll_interval=0.2):
        seen.append(change)
        if change.job_id == running.id and change.ended:
            break
    assert [c.state for c in seen if c.job_id == running.id][-1] == "finished"


def test_watch_stops_at_its_timeout(client: Client) -> None:
    job = client.submit(["sleep", "300"], notify=False)
    for change_stream in (True, False):
        started = time.monotonic()
        states = [c.state for c in client.watch([job.id], timeout=1.5, poll_interval=0.2,
                                                change_stream=change_stream)]
        assert 1.4 < time.monotonic() - started < 5
        assert states and "finished" not in states
    job.cancel()
    assert job.wait(timeout=60) == "killed"


# ---------------------------------------------------------------------- finding the database
def fake_daemon(state_dir: Path) -> subprocess.Popen[bytes]:
    """A live process whose command line names execd, with its pid in the pid file: what
    the client checks before trusting ``<state_dir>/mongodb.uri``."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                "execd-test-daemon"])
    # Popen returns once exec has begun; the kernel publishes the new command line a moment
    # later, and until then /proc/<pid>/cmdline reads empty.
    deadline = time.monotonic() + 10
    while not is_execd(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, "fake daemon did not start"
        time.sleep(0.01)
    (state_dir / "execd.pid").write_text(f"{process.pid}\n")
    return process


def test_a_client_finds_an_embedded_daemons_database(tmp_path: Path, mongo_uri: str,
                                                     database: str) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = tmp_path / "execd.ini"
    config.write_text(textwrap.dedent(f"""\
        [engine]
        state_dir = {state_dir}

        [mongodb]
        database = {database}
        """))
    with pytest.raises(NotRunning, match="execd is not running"):
        Client(config=config)
    (state_dir / "mongodb.uri").write_text(mongo_uri + "\n")
    with pytest.raises(NotRunning):  # a URI file left behind by a daemon that is gone
        Client(config=str(config))
    process = fake_daemon(state_dir)
    try:
        with Client(config=config) as client:
            assert client.uri == mongo_uri and client.database == database
            job_id = client.store.insert({"state": "to be built", "command": ["true"]})
            assert client.job(job_id).document["command"] == ["true"]
        old = os.environ.get("EXECD_CONFIG")
        os.environ["EXECD_CONFIG"] = str(config)
        try:
            with Client() as client:
                assert client.job(job_id).id == job_id
        finally:
            if old is None:
                del os.environ["EXECD_CONFIG"]
            else:
                os.environ["EXECD_CONFIG"] = old
    finally:
        process.kill()
        process.wait()


def test_a_system_that_cannot_hold_says_why_in_the_status(client: Client,
                                                          engine: Engine) -> None:
    job = client.submit(["sleep", "300"], notify=False)
    for change in client.watch([job.id], timeout=60):
        if change.state == "running":
            break
    job.hold()
    status = engine.wait_for(lambda: (s := job.status).hold_error and s, timeout=30,
                             what="the engine to act on the hold request")
    assert status.hold_requested is True and not status.held and status.state == "running"
    job.cancel()
    assert job.wait(timeout=60) == "killed"


def test_show_prints_the_command_the_engine_built_when_it_recorded_one(engine: Engine
                                                                       ) -> None:
    job = engine.submit("echo", "built", notify=False)
    engine.wait_ended([job])
    assert "['echo', 'built']" in engine.cli("show", str(job)).stdout
    # As the engine records it at build time, and a client rewrites the command afterwards.
    engine.store.db["jobs"].update_one({"_id": job}, {"$set": {
        "built_command": ["echo", "built"], "command": ["echo", "forged"]}})
    shown = engine.cli("show", str(job)).stdout
    assert "['echo', 'built']" in shown and "forged" not in shown
    assert "changed after building" in shown
