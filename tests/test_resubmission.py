"""Resubmission: failed attempts run again with more (policies per route and per job), client
requests to run an ended job again, and the crash safety of the chain (real daemons, real
mongod, real Local jobs)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from execution_engine import Client
from execution_engine.client import JobNotEnded
from execution_engine.config import load_config
from execution_engine.errors import ConfigError
from execution_engine.job import Job
from execution_engine.resubmission import MAX_ATTEMPTS, Policy
from tests.conftest import Engine

SYSTEMS = """\
[systems]
[[small]]
class = local
slots = 2
kill_grace = 1
[[big]]
class = local
slots = 2
kill_grace = 1
"""


def routes(first: str = "", second: str = "") -> str:
    """Two routes, ``first`` (taken by every first attempt) on ``small``, ``second`` on
    ``big``, each with the extra keys given."""
    return (SYSTEMS + "[routes]\n[[first]]\nsystem = small\n" + textwrap.dedent(first)
            + "[[second]]\nsystem = big\n" + textwrap.dedent(second))


def fails_once(flag: Path) -> list[str]:
    """A command that exits 3 the first time it runs and 0 afterwards (``flag`` remembers)."""
    return ["sh", "-c", f'test -e "{flag}" && exit 0; touch "{flag}"; echo first; exit 3']


# ---------------------------------------------------------------------- the policy
def test_a_policy_scales_sets_and_counts_attempts() -> None:
    policy = Policy.from_options({"resubmit_on": ["walltime_exceeded"], "resubmit_attempts": 3,
                                  "resubmit_delay": 10, "resubmit_backoff": 3,
                                  "resubmit_scale": ["walltime_s=2", "memory_mb=1.5"],
                                  "resubmit_set": ["queue=long"]}, "[routes][r]")
    assert policy.resubmits("walltime_exceeded", 1) and policy.resubmits("walltime_exceeded", 2)
    assert not policy.resubmits("walltime_exceeded", 3)  # three attempts in all
    assert not policy.resubmits("memory_exceeded", 1)
    assert policy.next_requirements({"walltime_s": 60, "memory_mb": 101, "cores": 2}) == {
        "walltime_s": 120, "memory_mb": 152, "cores": 2, "queue": "long"}
    assert policy.next_requirements(None) == {"queue": "long"}  # nothing to scale: only set
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3)] == [10, 30, 90]


def test_any_reason_but_never_a_completion_or_a_cancellation() -> None:
    policy = Policy(on=frozenset({"any"}), attempts=5)
    assert policy.resubmits("node_failure", 1) and policy.resubmits("x-site-preempted", 4)
    assert not policy.resubmits("cancelled", 1) and not policy.resubmits("completed", 1)
    assert not policy.resubmits("killed_by_system", 1)  # an operator's kill: only when named
    assert Policy(on=frozenset({"killed_by_system"}), attempts=2).resubmits("killed_by_system", 1)
    assert not Policy(on=frozenset({"any"}), attempts=100).resubmits("unknown", MAX_ATTEMPTS)


def test_a_jobs_own_policy_rewritten_against_the_contract_is_not_taken() -> None:
    assert Job({"_id": 1, "resubmit": {"attempts": 3}}).resubmit_policy == {"attempts": 3}
    assert Job({"_id": 1, "resubmit": {"attempts": "many"}}).resubmit_policy is None
    assert Job({"_id": 1, "resubmit": {"route": {"$gt": ""}}}).resubmit_policy is None


def test_a_jobs_own_policy_overrides_its_routes_key_by_key() -> None:
    route = Policy(on=frozenset({"walltime_exceeded"}), attempts=2, scale={"walltime_s": 2})
    job = route.overridden_by({"attempts": 4, "set": {"cores": 8}})
    assert job.on == route.on and job.scale == route.scale
    assert job.attempts == 4 and job.set_to == {"cores": 8}
    assert route.overridden_by(None) is route


@pytest.mark.parametrize(("keys", "error"), [
    ("resubmit_on = walltime\n", r"\[routes\]\[first\] resubmit_on: 'walltime' is not a reason"),
    ("resubmit_scale = queue=2\n", r"\[routes\]\[first\] resubmit_scale: 'queue=2' must be"),
    ("resubmit_scale = walltime_s=two\n", r"'two' is not a number"),
    ("resubmit_scale = walltime_s=0\n", r"a factor must be above 0"),
    ("resubmit_set = colour=blue\n", r"resubmit_set: 'colour=blue' must be <key>=<value>"),
    ("resubmit_route = nowhere\n", r"\[routes\]\[first\] resubmit_route: 'nowhere' is not a "
                                   r"route \(known: first, second\)"),
    ("resubmit_attempts = 0\n", r"resubmit_attempts"),
])
def test_a_bad_policy_is_refused_naming_the_route_and_key(tmp_path: Path, keys: str,
                                                          error: str) -> None:
    config = tmp_path / "execd.ini"
    config.write_text(routes(first=keys))
    with pytest.raises(ConfigError, match=error):
        load_config(config)


def test_a_policy_loads_from_its_route(tmp_path: Path) -> None:
    config = tmp_path / "execd.ini"
    config.write_text(routes(first="resubmit_on = nonzero_exit, memory_exceeded\n"
                                   "resubmit_attempts = 3\nresubmit_route = second\n"))
    loaded = load_config(config)
    first = loaded.route("first")
    assert first is not None
    assert first.resubmit == Policy(on=frozenset({"nonzero_exit", "memory_exceeded"}),
                                    attempts=3, route="second")
    assert loaded.route("second") is not None and loaded.route("second").resubmit == Policy()


# ---------------------------------------------------------------------- through the engine
def test_a_failed_attempt_runs_again_with_more_and_the_job_ends_once(
        engine_factory: Callable[..., Engine], tmp_path: Path) -> None:
    engine = engine_factory(routes(first="resubmit_on = nonzero_exit\nresubmit_attempts = 3\n"
                                         "resubmit_scale = walltime_s=2\n"))
    job_id = engine.submit(*fails_once(tmp_path / "flag"), requirements={"walltime_s": 100})
    [doc] = engine.wait_ended([job_id])
    assert doc["state"] == "finished" and doc["reason"] == "completed"
    assert doc["attempt"] == 2 and doc["requirements"] == {"walltime_s": 200}
    [first] = doc["attempts"]
    assert first["attempt"] == 1 and first["state"] == "error"
    assert first["reason"] == "nonzero_exit" and first["exit_code"] == 3
    assert first["requirements"] == {"walltime_s": 100} and first["system"] == "small"
    # The first attempt's files are kept aside; the job directory is the second's.
    job_dir = Path(doc["job_dir"])
    assert first["job_dir"] == f"{job_dir}.attempt-1"
    assert Path(first["job_dir"], "job.stdout").read_text() == "first\n"
    assert (job_dir / "job.stdout").read_text() == ""
    assert (job_dir / ".execd" / "exit_code").read_text().strip() == "0"
    states = [entry["state"] for entry in doc["history"]]
    assert states.count("finished") == 1 and "error" not in states
    assert states.count("to be built") == 1  # the second attempt (an insert has no entry)
    assert any("attempt 1 ended (nonzero_exit)" in (entry.get("message") or "")
               and "attempt 2 of 3" in entry["message"] and "walltime_s 200" in entry["message"]
               for entry in doc["history"])


def test_attempts_run_out_and_the_last_one_ends_the_job(
        engine_factory: Callable[..., Engine]) -> None:
    engine = engine_factory(routes(first="resubmit_on = any\nresubmit_attempts = 3\n"))
    job_id = engine.submit("sh", "-c", "exit 5")
    [doc] = engine.wait_ended([job_id], timeout=90)
    assert doc["state"] == "error" and doc["reason"] == "nonzero_exit"
    assert doc["attempt"] == 3 and [a["attempt"] for a in doc["attempts"]] == [1, 2]
    assert [entry["state"] for entry in doc["history"]].count("error") == 1
    assert doc["notification"]["state"] in ("none", "due", "sent", "sending")


def test_a_reason_the_policy_does_not_list_ends_the_job(
        engine_factory: Callable[..., Engine]) -> None:
    engine = engine_factory(routes(first="resubmit_on = walltime_exceeded\n"
                                         "resubmit_attempts = 3\n"))
    job_id = engine.submit("sh", "-c", "exit 4")
    [doc] = engine.wait_ended([job_id])
    assert doc["state"] == "error" and "attempts" not in doc and "attempt" not in doc


def test_a_jobs_own_policy_and_the_next_route(engine_factory: Callable[..., Engine],
                                              tmp_path: Path) -> None:
    engine = engine_factory(routes())  # no policy on either route
    job_id = engine.submit(*fails_once(tmp_path / "flag"), resubmit={
        "on": ["nonzero_exit"], "attempts": 2, "route": "second", "set": {"cores": 1}})
    [doc] = engine.wait_ended([job_id])
    assert doc["state"] == "finished" and doc["attempt"] == 2
    assert doc["attempts"][0]["system"] == "small" and doc["attempts"][0]["route"] == "first"
    assert doc["attempts"][0]["next_route"] == "second"
    assert doc["system"] == "big" and doc["route"] == "second"
    assert doc["requirements"] == {"cores": 1}


def test_a_delayed_attempt_survives_a_crash_of_the_engine(
        engine_factory: Callable[..., Engine], tmp_path: Path) -> None:
    """SIGKILL of every engine process between two attempts: after the restart the second
    attempt runs once and the job ends once."""
    config = routes(first="resubmit_on = nonzero_exit\nresubmit_attempts = 2\n"
                          "resubmit_delay = 3\n")
    engine = engine_factory(config)
    job_id = engine.submit(*fails_once(tmp_path / "flag"))
    engine.wait_for(lambda: (engine.store.get(job_id) or {}).get("attempt") == 2,
                    what="the second attempt to be planned")
    doc = engine.store.get(job_id)
    assert doc is not None and doc["state"] == "to be built"
    assert doc["next_attempt_at"].replace(tzinfo=UTC) > datetime.now(UTC)  # still waiting
    engine.kill_all()
    engine.process = None
    engine.start()
    [doc] = engine.wait_ended([job_id], timeout=60)
    assert doc["state"] == "finished" and doc["attempt"] == 2 and len(doc["attempts"]) == 1
    states = [entry["state"] for entry in doc["history"]]
    assert states.count("finished") == 1 and states.count("submitted") <= 2
    assert states.count("running") == 2  # one run per attempt, none doubled


# ---------------------------------------------------------------------- client requests
def test_a_client_runs_a_finished_job_again_once(engine: Engine, mongo_uri: str,
                                                 database: str) -> None:
    job_id = engine.submit("sh", "-c", "echo run >>../runs.log; echo out")
    engine.wait_ended([job_id])
    with Client(mongo_uri, database=database) as client:
        job = client.job(job_id)
        status = job.resubmit({"walltime_s": 30})
        assert status.attempt == 1  # asked; the engine starts the new attempt
        engine.wait_for(lambda: job.status.attempt == 2 and job.status.ended,
                        what="the second attempt to end")
        final = job.status
    doc = engine.store.get(job_id)
    assert doc is not None
    assert final.state == "finished" and doc["requirements"] == {"walltime_s": 30}
    [first] = doc["attempts"]
    assert first["state"] == "finished" and first["reason"] == "completed"
    assert "resubmit_requested" not in doc
    job_dir = Path(doc["job_dir"])
    assert (job_dir.parent / "runs.log").read_text() == "run\nrun\n"  # once more, not twice
    assert Path(first["job_dir"], "job.stdout").read_text() == "out\n"
    assert any("resubmitted on request after attempt 1 (finished)" in (e.get("message") or "")
               for e in doc["history"])


def test_a_resubmission_of_a_job_that_has_not_ended_is_refused(
        engine: Engine, mongo_uri: str, database: str) -> None:
    job_id = engine.submit("sleep", "30")
    engine.wait_for(lambda: (engine.store.get(job_id) or {}).get("state") == "running",
                    what="the job to run")
    with Client(mongo_uri, database=database) as client:
        with pytest.raises(JobNotEnded, match="only an ended job runs again"):
            client.job(job_id).resubmit()
        with pytest.raises(ValueError, match="resubmit_requested"):
            client.job(job_id).resubmit({"walltime_s": -1})
    # Written raw by a client, the request is refused and the refusal recorded.
    engine.store.jobs.update_one({"_id": job_id}, {"$set": {"resubmit_requested": True}})
    doc = engine.wait_for(lambda: (d := engine.store.get(job_id)) and
                          "resubmit_requested" not in d and d, what="the refusal")
    assert doc["state"] == "running" and "attempt" not in doc
    assert any("refused resubmit_requested True: the job is 'running'" in (e.get("message") or "")
               for e in doc["history"])


def test_execd_resubmit_from_the_command_line(engine: Engine) -> None:
    job_id = engine.submit("sh", "-c", "exit 2")
    engine.wait_ended([job_id])
    result = engine.cli("resubmit", str(job_id), "--walltime-s", "40")
    assert f"{job_id} resubmission requested" in result.stdout
    doc = engine.wait_for(lambda: (d := engine.store.get(job_id)) and d.get("attempt") == 2
                          and d.get("state") == "error" and d, what="the second attempt")
    assert doc["requirements"] == {"walltime_s": 40} and doc["attempts"][0]["exit_code"] == 2
    shown = engine.cli("show", str(job_id)).stdout
    assert "earlier attempts:" in shown and "1: error (nonzero_exit)" in shown
    running = engine.submit("sleep", "30")
    engine.wait_for(lambda: (engine.store.get(running) or {}).get("state") == "running",
                    what="the job to run")
    refused = engine.cli("resubmit", str(running), check=False)
    assert refused.returncode == 1 and "only an ended job runs again" in refused.stderr


def test_local_walltime_and_memory_failures_run_again_with_doubled_limits(
        engine_factory: Callable[..., Engine]) -> None:
    """The issue's case on Local: over its walltime, over its memory; each attempt is ended
    by the system's own enforcement, and the second, with twice the limit, finishes."""
    engine = engine_factory(routes(first="resubmit_on = walltime_exceeded, memory_exceeded\n"
                                         "resubmit_attempts = 2\n"
                                         "resubmit_scale = walltime_s=2, memory_mb=2\n"))
    slow = engine.submit("sleep", "3", requirements={"walltime_s": 2})
    hungry = engine.submit(
        sys.executable, "-c", "b = bytearray(150 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])",
        requirements={"memory_mb": 100})
    slow_doc, hungry_doc = engine.wait_ended([slow, hungry], timeout=90)
    assert slow_doc["attempts"][0]["reason"] == "walltime_exceeded"
    assert slow_doc["state"] == "finished" and slow_doc["requirements"] == {"walltime_s": 4}
    assert hungry_doc["attempts"][0]["reason"] == "memory_exceeded"
    assert hungry_doc["state"] == "finished" and hungry_doc["requirements"] == {"memory_mb": 200}
