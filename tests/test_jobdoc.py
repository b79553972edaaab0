"""Checking job documents: the compiled fast check and the full validator agree on every verdict,
and names that become paths or shell words are refused with a trailing newline."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import bson
import pytest
from bson import CodecOptions, Int64, ObjectId

from execution_engine.jobdoc import _validator, check_job, is_valid_client_part
from tests.test_bad_input import BAD_JOBS

GOOD_JOBS: list[dict[str, Any]] = [
    {"state": "to be built", "command": ["true"]},
    {"state": "to be built", "command": ["echo", "a b", "$(x)"], "project": "p1", "name": "n",
     "owner": "a@b.c", "notify": False, "environment": {"A_1": "x", "_B": ""},
     "requirements": {"cores": 2, "memory_mb": 100, "walltime_s": 60, "queue": "all.q",
                      "software": ["blast"]},
     "metadata": {"inserted_at": datetime.now(UTC), "tags": [1, "x", None]},
     "created_at": datetime.now(UTC)},
    {"state": "to be built", "app": {"name": "blast", "version": 2},
     "inputs": [{"name": "seq", "value": "ACGT"}, {"name": "n", "value": 3},
                {"name": "f", "path": "/data/x", "action": "COPY"}]},
    {"state": "to be built", "app": {"name": "blast"}, "inputs": [{"name": "n", "value": 1}],
     "splitter": {"input": "n", "range": [1, 10]}},
]

#: Values that validators may read differently (floats for integers, booleans for numbers,
#: BSON's own types), put into every typed field: what a document read from MongoDB can hold.
ODD_VALUES: list[Any] = [1.0, 2.5, True, 0, -1, "", "x\n", None, [], {}, b"a", Int64(5),
                         ObjectId(), float("nan"), datetime.now(UTC), 10**18]
FIELDS = [("command",), ("project",), ("name",), ("owner",), ("notify",), ("environment", "A"),
          ("requirements", "cores"), ("requirements", "queue"), ("requirements", "software"),
          ("app", "name"), ("app", "version"), ("metadata",), ("state",)]


def _with(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = {**doc}
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = {**(out.get(path[0]) or {}), path[1]: value}
    return out


def _corpus() -> list[dict[str, Any]]:
    docs = [dict(doc) for doc, _ in BAD_JOBS] + GOOD_JOBS
    for base, path, value in itertools.product(GOOD_JOBS[:2], FIELDS, ODD_VALUES):
        docs.append(_with(base, path, value))
    # As the Building actor sees them: read back from BSON (lists, tz-aware datetimes).
    options = CodecOptions(tz_aware=True)
    return [bson.decode(bson.encode({k: v for k, v in doc.items() if k != "_id"}), options)
            for doc in docs]


@pytest.mark.parametrize("doc", _corpus())
def test_the_fast_check_gives_the_full_validators_verdict(doc: dict[str, Any]) -> None:
    full_verdict = not list(_validator().iter_errors(doc))
    assert is_valid_client_part(doc) == full_verdict, doc


@pytest.mark.parametrize("doc", GOOD_JOBS)
def test_good_jobs_have_no_problems(doc: dict[str, Any]) -> None:
    assert check_job({"_id": "job-1", **doc}, max_command_bytes=1 << 17,
                     max_document_bytes=1 << 20) == []


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("_id", "job\n", "cannot name a job directory"),
    ("project", "p\n", "project: 'p\\n' does not match"),
    ("environment", {"A\n": "x"}, "environment: 'A\\n' does not match"),
])
def test_a_trailing_newline_does_not_pass_for_the_end_of_a_name(field: str, value: Any,
                                                                 expected: str) -> None:
    doc = {"_id": "job-1", "state": "to be built", "command": ["true"], field: value}
    problems = check_job(doc, max_command_bytes=1 << 17, max_document_bytes=1 << 20)
    assert any(expected in p for p in problems), problems
