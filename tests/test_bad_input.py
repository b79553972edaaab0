"""Bad job documents never stop the daemon: each ends in error naming the problem."""

from __future__ import annotations

import pytest

from tests.conftest import Engine

BAD_JOBS = [
    ({"state": "to be built"}, "command: required field is missing"),
    ({"state": "to be built", "command": "echo hi"}, "command: 'echo hi' is not of type 'array'"),
    ({"state": "to be built", "command": ["echo", 3]}, "command.1: 3 is not of type 'string'"),
    ({"state": "to be built", "command": []}, "command: [] should be non-empty"),
    ({"state": "to be built", "command": ["true"], "project": "../../etc"},
     "project: '../../etc' does not match"),
    ({"state": "to be built", "command": ["true"], "environment": {"A": 1}},
     "environment.A: 1 is not of type 'string'"),
    ({"state": "to be built", "command": ["true"], "requirements": {"cores": "two"}},
     "requirements.cores: 'two' is not of type 'integer'"),
    ({"state": "to be built", "command": ["true"], "notify": "yes"},
     "notify: 'yes' is not of type 'boolean'"),
    ({"state": "to be built", "command": ["echo", "x" * 300_000]},
     "more than the 131072 allowed ([engine] max_command_bytes)"),
    ({"state": "to be built", "command": ["true"], "metadata": {"blob": "y" * 2_000_000}},
     "more than the 1048576 allowed ([engine] max_document_bytes)"),
    ({"_id": "../escape", "state": "to be built", "command": ["true"]},
     "cannot name a job directory"),
    ({"command": ["true"]}, "state is missing"),
    ({"state": "queued", "command": ["true"]}, "state 'queued' is not a job state"),
    ({"state": 7, "command": ["true"]}, "state 7 is not a job state"),
]


def test_each_bad_job_ends_in_error_naming_the_problem_and_good_jobs_still_run(
        engine: Engine) -> None:
    bad_ids = [engine.insert(dict(doc)) for doc, _ in BAD_JOBS]
    good = engine.submit("echo", "still fine")
    docs = engine.wait_ended([*bad_ids, good])
    for doc, (_, expected) in zip(docs, BAD_JOBS, strict=False):
        assert doc["state"] == "error", doc
        assert expected in doc["status_message"], (expected, doc["status_message"])
    assert docs[-1]["state"] == "finished"
    assert engine.process is not None and engine.process.poll() is None


def test_all_problems_are_reported_at_once(engine: Engine) -> None:
    job = engine.insert({"state": "to be built", "command": "x", "project": "a b",
                         "notify": 1})
    (doc,) = engine.wait_ended([job])
    message = doc["status_message"]
    for field in ("command:", "project:", "notify:"):
        assert field in message


@pytest.mark.parametrize(("value", "expected"), [(None, "state is missing"),
                                               ({"nested": True}, "not a job state")])
def test_unusable_state_values_end_in_error(engine: Engine, value: object, expected: str
                                            ) -> None:
    job = engine.insert({"state": value, "command": ["true"]})
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "error"
    assert expected in doc["status_message"]
