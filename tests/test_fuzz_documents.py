"""Fuzzing the jobs collection: more than a thousand generated documents against a live engine.

A seeded generator (``EXECD_FUZZ_SEED`` picks another seed; the seed is in every failure
message) writes hostile documents straight into MongoDB, as any client of the collection can:
wrong types, query operators as values, huge values, control characters and unicode, missing and
extra fields, every engine state, aliased ids (an ObjectId and its hex string, an int and its
decimal string) and forged engine fields (``job_dir``, ``native_id``, ``notification``,
``history``, ``engine_state``...), shuffled into a stream of good jobs. Then:

* every good job finishes;
* every document that breaks the contract ends in ``error`` with a ``reason`` of the closed list
  and a status message, or is refused by the database at insertion;
* every other document ends, with a reason, and when it finished it did so in the directory the
  engine computed (a forged ``job_dir`` is never used);
* no actor is restarted more than the documented limit (``FAILING_RESTARTS``, read in the
  daemon document's ``actors``), and neither the Monitor nor the master;
* nothing is written outside the jobs directory (a snapshot of the tree around it);
* no signal reaches a process the engine did not start (a sentinel ``sleep`` in its own process
  group, named by forged running documents that ask to be cancelled, stays alive).
"""

from __future__ import annotations

import os
import random
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import PyMongoError

from execution_engine.monitor import FAILING_RESTARTS
from execution_engine.systems.base import SCRIPT_NAME, host_name
from tests.conftest import Engine, _alive
from tests.test_hostile_documents import (
    REASONS,
    daemon_actors,
    engine_processes,
    foreign_sleep,
    local_system,
    make_engine,
    native_id_of,
    refusal_recorded,
    short,
    stop_engine,
    tree_snapshot,
)

SEED = int(os.environ.get("EXECD_FUZZ_SEED", "20261201"))
BAD_DOCUMENTS = 1000
GOOD_JOBS = 100
ALIAS_PAIRS = 20
ROUNDS = 10
RUN_LIMIT = 100.0
"""Seconds every document gets to end (a healthy engine needs a small part of it)."""
STALL_LIMIT = 20.0
"""Seconds without any document ending after which the rest are reported stuck."""

REQUEST_FIELDS = ("cancel_requested", "hold_requested")
"""The documented requests a client makes of a job: a malformed one may be refused alone."""
ENGINE_STATES = ["building", "to be submitted", "submitting", "submitted", "pending", "running",
                 "hold", "finished", "error", "killed"]


@dataclass
class Case:
    """One generated document and what must become of it."""

    doc: dict[str, Any]
    expect: str
    """``error`` (must end in error or be refused at insertion), ``refused`` (a malformed
    request: the document ends in error, or the request is refused and recorded in the
    history), ``ended`` (must end, any way, with a reason), ``good`` (must finish)."""
    kind: str
    """What the generator did, for failure messages."""


# ---------------------------------------------------------------------- value generators
def nasty_text(rng: random.Random, size: int = 12) -> str:
    """Text with control characters, unicode, quotes, operators and path syntax."""
    alphabet = (string.ascii_letters + string.digits + " \t\r\n\0\x1b\x7f'\"`$\\;|&<>/.*?-"
                + "\u00e9\u00df\u2603\u202e\u200b\ufeff\U0001f680\u0645\u4e2d")
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, size)))


def wrong_value(rng: random.Random) -> Any:
    """A value of some other type, or a query operator, or something huge."""
    choices: list[Callable[[], Any]] = [
        lambda: rng.randint(-2 ** 63, 2 ** 63 - 1),
        lambda: rng.random() * 10 ** rng.randint(-5, 300),
        lambda: rng.choice([True, False]),
        lambda: [nasty_text(rng)],
        lambda: {"$set": 1},
        lambda: {"$ne": None},
        lambda: {"$gt": ""},
        lambda: {"$where": "sleep(1000)"},
        lambda: {"$in": ["to be built", "running"]},
        lambda: {"nested": {"deeper": [1, {"$or": []}]}},
        lambda: random_object_id(rng),
        lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        lambda: b"\x00\xff bytes",
        lambda: [],
        lambda: {},
    ]
    return rng.choice(choices)()


def random_object_id(rng: random.Random) -> ObjectId:
    """An ObjectId drawn from the seeded generator (``ObjectId()`` would differ per run)."""
    return ObjectId(bytes(rng.getrandbits(8) for _ in range(12)))


def good_command(rng: random.Random) -> list[str]:
    return rng.choice([["true"], ["echo", nasty_text(rng).replace("\0", "")],
                       ["sh", "-c", "exit 0"]])


# ---------------------------------------------------------------------- document generators
class Generator:
    """Seeded documents of each kind; ``outside`` is where forged paths point."""

    def __init__(self, seed: int, outside: Path, sentinel_native_id: str) -> None:
        self.rng = random.Random(seed)
        self.outside = outside
        self.sentinel = sentinel_native_id
        self.forged_dirs = 0

    def base(self) -> dict[str, Any]:
        return {"state": "to be built", "command": good_command(self.rng)}

    # -- documents that break the contract: they must end in error (or be refused)
    def bad_state(self) -> Case:
        rng = self.rng
        state = rng.choice([
            *ENGINE_STATES, "TO BE BUILT", "to be built ", " to be built", "to be built\n",
            "to\u00a0be built", "queued", "", "\U0001f680", 7, 3.5, True,
            ["to be built"], ["to be built", "running"], {"$set": 1}, {"$ne": None},
            {"$in": ["to be built"]}, {"$exists": True}, {"state": "to be built"},
        ])
        doc = {**self.base(), "state": state}
        kind = f"state={state!r}"
        if state in ENGINE_STATES:
            doc.update(self.forged_engine_fields(cancel=rng.random() < 0.5))
            kind += f" (engine_state={doc['engine_state']!r})"
        return Case(doc, "error", kind)

    def forged_engine_fields(self, *, cancel: bool) -> dict[str, Any]:
        """Fields a client forges to make the engine run, track or kill what it chooses."""
        self.forged_dirs += 1
        forged = self.outside / f"forged-{self.forged_dirs}"
        (forged / ".execd").mkdir(parents=True, exist_ok=True)
        script = forged / SCRIPT_NAME
        script.write_text(f"#!/bin/sh\ntouch {self.outside}/ran-{self.forged_dirs}\n")
        script.chmod(0o755)
        fields: dict[str, Any] = {
            "job_dir": str(forged), "system": "local", "host": host_name(),
            "native_id": self.sentinel, "route": "default",
            "engine_state": self.rng.choice(["running", "to be built", None]),
        }
        if cancel:
            fields["cancel_requested"] = True
        return fields

    def bad_field(self) -> Case:
        rng = self.rng
        field, values = rng.choice(list(BAD_FIELD_VALUES.items()))
        value = rng.choice(values)
        value = value(rng) if callable(value) else value
        doc = self.base()
        if field == "-command":
            del doc["command"]
        else:
            doc[field] = value
        # A malformed request is refused and recorded (the job then runs as if not asked), or
        # the whole document is: both keep the client informed.
        expect = "refused" if field in REQUEST_FIELDS else "error"
        return Case(doc, expect, f"{field}={short_repr(value)}")

    def bad_id(self) -> Case:
        rng = self.rng
        value = rng.choice([
            "../escape", "a/b", "", ".hidden", "x" * 65, "\u00e9t\u00e9", "sp ace", "nl\n",
            "-dash", "nul\0", 3.5, {"a": 1}, {"$oid": "x"}, True, datetime(2026, 1, 2, tzinfo=UTC),
            lambda r: "z" * r.randint(65, 2000),
        ])
        value = value(rng) if callable(value) else value
        return Case({**self.base(), "_id": value}, "error", f"_id={short_repr(value)}")

    def too_big(self) -> Case:
        size = self.rng.choice([1_100_000, 4_000_000])
        return Case({**self.base(), "metadata": {"blob": "y" * size}}, "error",
                    f"metadata of {size} bytes")

    # -- documents the engine may accept (ignoring what it does not own) or refuse
    def forged_field(self) -> Case:
        rng = self.rng
        field, values = rng.choice(list(FORGED_FIELD_VALUES.items()))
        value = rng.choice(values)
        if value == "FORGED_DIR":
            self.forged_dirs += 1
            value = str(self.outside / f"forged-{self.forged_dirs}")
        elif value == "SENTINEL":
            value = self.sentinel
        doc = {**self.base(), field: value}
        if field == "native_id" and rng.random() < 0.5:
            doc["cancel_requested"] = True
        return Case(doc, "ended", f"forged {field}={short_repr(value)}")

    def odd_but_valid(self) -> Case:
        rng = self.rng
        doc = self.base()
        choice = rng.randrange(6)
        if choice == 0:
            doc["name"] = nasty_text(rng, 40)
        elif choice == 1:
            doc["owner"] = nasty_text(rng, 40)
        elif choice == 2:
            doc["environment"] = {"K_" + str(rng.randrange(100)): nasty_text(rng).replace(
                "\0", "")}
        elif choice == 3:
            doc["metadata"] = {"$set": {"state": "running"}, "k": wrong_value(rng)}
        elif choice == 4:
            doc[f"extra_{rng.randrange(1000)}"] = wrong_value(rng)
        else:
            del doc["state"]  # a new job may leave the state out
        return Case(doc, "ended", f"odd field {sorted(set(doc) - {'command'})}")

    def good(self) -> Case:
        return Case({"state": "to be built", "command": good_command(self.rng)}, "good",
                    "good job")

    def bad(self) -> Case:
        """One document of a kind picked with fixed weights."""
        roll = self.rng.random()
        if roll < 0.30:
            return self.bad_state()
        if roll < 0.62:
            return self.bad_field()
        if roll < 0.70:
            return self.bad_id()
        if roll < 0.71:
            return self.too_big()
        if roll < 0.88:
            return self.forged_field()
        return self.odd_but_valid()

    def aliases(self) -> Iterator[Case]:
        """Pairs of ids that print alike: an ObjectId and its hex string, an int and its
        decimal string."""
        for i in range(ALIAS_PAIRS):
            if i % 2:
                first: Any = random_object_id(self.rng)
                second: Any = str(first)
            else:
                first = 9_000_000 + self.rng.randrange(1_000_000)
                second = str(first)
            for job_id in (first, second):
                token = f"{type(job_id).__name__}-{job_id}"
                yield Case({"_id": job_id, "state": "to be built",
                            "command": ["echo", token]}, "ended", f"alias {token}")


BAD_FIELD_VALUES: dict[str, list[Any]] = {
    "command": ["echo hi", [], [1], ["a", None], ["\0"], ["ok", "nul\0inside"], [{"$set": 1}],
                {"$set": 1}, None, 12, [[]], ["x" * 200_000], lambda r: [wrong_value(r)]],
    "-command": [None],
    "name": [12, ["a"], {"$set": 1}, "n" * 257, None, wrong_value],
    "owner": [12, {"$gt": ""}, "o" * 257, ["a@x", "b@y"], None],
    "project": ["../x", "a b", "p\n", "\u00fc", 12, "", ".hidden", "x" * 101, "a/b",
                {"$ne": None}],
    "environment": ["A=1", {"A": 1}, {"A": None}, ["A"], {"1A": "x"}, {"A-B": "x"},
                    {"$set": "x"}, {"A": {"$set": 1}}],
    "requirements": [{"cores": "two"}, {"cores": -1}, {"cores": 0}, "big",
                     {"memory_mb": {"$gt": 1}}, {"gpus_please": 1}, {"cores": 1.5}],
    "notify": ["yes", 1, "a@x,b@y", None, {"$set": True}],
    "cancel_requested": ["yes", 1, None, {"$ne": False}, "true"],
    "hold_requested": ["yes", 0, {"$ne": False}],
    "app": [{"name": "square"}, "square", {"$set": 1}],  # with command: not allowed
    "inputs": [[{"name": "n", "value": 1}], "x"],  # only with app
    "metadata": ["not an object", [1, 2], 12],
}

FORGED_FIELD_VALUES: dict[str, list[Any]] = {
    "job_dir": ["FORGED_DIR", "/", "/etc", "relative/dir", 12, {"$set": 1}],
    "native_id": ["SENTINEL", "1:0", "-1:0", "0:0", "not a pid", 12, {"$ne": None}],
    "notification": [{"state": "due", "attempts": 0}, {"state": "sending"}, {"state": "sent"},
                     "due", {"state": {"$ne": None}}, {"state": "due", "next_attempt": 12}],
    "history": ["x", ["x"], [{"state": "finished"}], {"$push": 1}, 12, [None] * 200],
    "engine_state": ["finished", "running", "to be submitted", {"$set": 1}, 12, None],
    "system": ["local", "nosuch", {"$ne": None}, 12],
    "host": ["elsewhere", {"$ne": None}, 12],
    "lease": [{"owner": "x", "token": "t", "until": datetime(2999, 1, 1, tzinfo=UTC)}, "x"],
    "submission": [{"recover": True}, {"retry_at": datetime(2999, 1, 1, tzinfo=UTC)},
                   {"attempts": "many"}, "x"],
    "kill": [{"term_at": datetime(2000, 1, 1, tzinfo=UTC)}, "x", {"term_at": "now"}],
    "exit_code": [0, 137, "0", {"$set": 0}],
    "outputs": [[{"path": "/etc/passwd", "size": 1}], "x"],
    "output_patterns": [["**"], ["/etc/*"], ["../*"], "x"],
    "route": ["nosuch", {"$ne": None}],
    "reason": ["completed", "nosuch", 12],
    "parent": [ObjectId(), "nosuch", {"$ne": None}],
    "index": [-1, "x"],
    "subjobs": [{"total": 10 ** 6}, "x"],
    "ended_at": [datetime(2000, 1, 1, tzinfo=UTC), "x"],
    "status_message": ["all good", 12],
    "created_at": ["x", datetime(1970, 1, 1, tzinfo=UTC)],
}


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------- the run
def insert_cases(engine: Engine, cases: list[Case]) -> tuple[list[tuple[Any, Case]],
                                                             list[tuple[Case, str]]]:
    """Insert each case as a client would; the inserted ones and the refused ones."""
    inserted: list[tuple[Any, Case]] = []
    refused: list[tuple[Case, str]] = []
    for case in cases:
        try:
            job_id = engine.store.jobs.insert_one(case.doc).inserted_id
        except (PyMongoError, OverflowError, ValueError, TypeError) as exc:
            refused.append((case, repr(exc)[:200]))
            continue
        inserted.append((job_id, case))
    return inserted, refused


def problems_of(  # noqa: PLR0911 - a return per way to go wrong
        engine: Engine, job_id: Any, case: Case, doc: dict[str, Any] | None) -> str | None:
    """What is wrong with how ``case`` ended, or None."""
    if doc is None:
        return "the document disappeared"
    state = doc.get("state")
    if state not in ("finished", "error", "killed"):
        return f"did not end: state {short_repr(state)}"
    if doc.get("reason") not in REASONS:
        return (f"ended {state} without a reason of the closed list: "
                f"{short_repr(doc.get('reason'))}")
    if case.expect == "good" and state != "finished":
        return f"a good job ended {state}: {doc.get('status_message')!r}"
    if case.expect == "refused" and state != "error":
        field = case.kind.split("=")[0]
        if not refusal_recorded(doc, field):
            return f"ended {state} with the malformed {field} neither refused nor recorded"
    if case.expect == "error":
        if state != "error":
            return f"a document breaking the contract ended {state}, not error"
        if not isinstance(doc.get("status_message"), str) or not doc["status_message"]:
            return "ended in error without a status message"
    if state == "finished":
        project = doc.get("project") if isinstance(doc.get("project"), str) else "default"
        expected_dir = str(engine_jobs_dir(engine) / (project or "default") / str(job_id))
        if doc.get("job_dir") != expected_dir:
            return f"finished in {doc.get('job_dir')!r}, not the engine's {expected_dir!r}"
    return None


def engine_jobs_dir(engine: Engine) -> Path:
    return engine.state_dir.parent / "around" / "jobs"


@pytest.fixture
def fuzz_root(tmp_path: Path, database: str) -> tuple[Path, str]:
    """A directory and a database of the test's own."""
    return tmp_path, database


def test_a_thousand_hostile_documents_among_good_jobs(fuzz_root: tuple[Path, str],
                                                      mongo_uri: str) -> None:
    root, database = fuzz_root
    around = root / "around"
    outside = around / "outside"
    outside.mkdir(parents=True)
    (around / "decoy.txt").write_text("must stay as it is\n")
    (around / "jobs").mkdir()
    engine = make_engine(root, mongo_uri, database, local_system(),
                         f"jobs_dir = {around / 'jobs'}\n", start=False)
    with foreign_sleep() as sentinel:
        generator = Generator(SEED, outside, native_id_of(sentinel.pid))
        cases = [generator.bad() for _ in range(BAD_DOCUMENTS)]
        cases += list(generator.aliases())
        cases += [generator.good() for _ in range(GOOD_JOBS)]
        generator.rng.shuffle(cases)
        before = tree_snapshot(around, skip=around / "jobs")
        engine.start()
        try:
            run_and_check(engine, cases, around, before, sentinel.pid)
        finally:
            stop_engine(engine)
        assert sentinel.poll() is None, f"seed {SEED}: the sentinel was signalled"


def run_and_check(engine: Engine, cases: list[Case], around: Path,
                  before: dict[str, tuple[int, int, int]], sentinel: int) -> None:
    pids = engine_processes(engine)
    daemon_pids = {k: v for k, v in pids.items() if k in ("master", "monitor")}
    inserted: list[tuple[Any, Case]] = []
    refused: list[tuple[Case, str]] = []
    size = -(-len(cases) // ROUNDS)
    for start in range(0, len(cases), size):  # a stream, not one burst
        more, no = insert_cases(engine, cases[start:start + size])
        inserted += more
        refused += no
        time.sleep(0.2)
    ids = [job_id for job_id, _ in inserted]
    deadline = time.monotonic() + RUN_LIMIT
    docs: dict[Any, dict[str, Any]] = {}
    waiting, progress_at = len(ids), time.monotonic()
    while time.monotonic() < deadline:
        docs = {key(d["_id"]): d for d in engine.store.jobs.find(
            {"_id": {"$in": ids}}, {"metadata": 0, "command": 0})}
        left = sum(docs.get(key(i), {}).get("state") not in ("finished", "error", "killed")
                   for i in ids)
        if not left:
            break
        if left < waiting:
            waiting, progress_at = left, time.monotonic()
        elif time.monotonic() - progress_at > STALL_LIMIT:
            break  # nothing ended for a long while: the rest is stuck
        time.sleep(0.5)
    failures: list[str] = []
    by_kind: Counter[str] = Counter()
    for job_id, case in inserted:
        problem = problems_of(engine, job_id, case, docs.get(key(job_id)))
        if problem is not None:
            by_kind[f"{case.kind[:50]} -> {problem.split(';')[0][:70]}"] += 1
            failures.append(f"{case.kind} (_id {short_repr(job_id)}): {problem}; "
                            f"{short(docs.get(key(job_id)), 400)}")
    failures += refused_problems(refused)
    failures += alias_problems(inserted, docs)
    health = engine_problems(engine, daemon_pids, around, before, sentinel)
    good = [job_id for job_id, case in inserted if case.expect == "good"]
    assert len(good) == GOOD_JOBS, f"seed {SEED}: good jobs refused at insertion"
    assert not failures and not health, (
        f"seed {SEED}: {len(failures)} of {len(inserted)} documents went wrong "
        f"; {len(refused)} refused at insertion.\nBy kind:\n"
        + "".join(f"  {n:4} x {what}\n" for what, n in by_kind.most_common(40))
        + "".join(f"ENGINE: {problem}\n" for problem in health)
        + "First documents:\n" + "\n".join(failures[:25]))


def engine_problems(engine: Engine, daemon_pids: dict[str, list[int]], around: Path,
                    before: dict[str, tuple[int, int, int]], sentinel: int) -> list[str]:
    """What went wrong with the engine itself during the run (not with one document)."""
    # No actor crash-looped, neither the Monitor nor the master restarted.
    health: list[str] = []
    try:
        actors = daemon_actors(engine)
    except AssertionError as exc:
        health.append(str(exc))
        actors = []
    looping = [a for a in actors if a.get("state") == "failing"
               or int(a.get("restarts") or 0) > FAILING_RESTARTS]
    if looping:
        health.append(f"actors restarted more than {FAILING_RESTARTS} times: {looping}")
    now = {k: v for k, v in engine_processes(engine).items() if k in ("master", "monitor")}
    if now != daemon_pids:
        health.append(f"the daemon restarted: {daemon_pids} -> {now}")
    # Nothing written outside the jobs directory, no foreign process signalled.
    after = tree_snapshot(around, skip=around / "jobs")
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        health.append(f"written outside the jobs directory: {changed[:20]}")
    if not _alive(sentinel):
        health.append("a process the engine never started was killed (the sentinel)")
    return health


def key(job_id: Any) -> str:
    """A job id as a dictionary key: ids of any type (a document is unhashable), aliases kept
    apart (the type tells ``5`` from ``'5'`` and an ObjectId from its hex string), datetimes
    read back in another time zone class still equal."""
    return f"{type(job_id).__name__}:{job_id}"


def refused_problems(refused: list[tuple[Case, str]]) -> list[str]:
    """Only a document that breaks the contract may be refused at insertion."""
    return [f"{case.kind}: refused at insertion although valid: {error}"
            for case, error in refused if case.expect == "good"]


def alias_problems(inserted: list[tuple[Any, Case]], docs: dict[Any, dict[str, Any]]
                   ) -> list[str]:
    """Two jobs whose ids print alike never share a directory, and each finished one holds its
    own output."""
    problems = []
    finished_dirs: dict[str, Any] = {}
    for job_id, case in inserted:
        if not case.kind.startswith("alias "):
            continue
        doc = docs.get(key(job_id)) or {}
        if doc.get("state") != "finished":
            if doc.get("state") == "error" and "_id" not in str(doc.get("status_message")):
                problems.append(f"{case.kind}: refused without naming _id: {short(doc, 300)}")
            continue
        job_dir = str(doc.get("job_dir"))
        if job_dir in finished_dirs:
            problems.append(f"{case.kind}: shares {job_dir} with {finished_dirs[job_dir]!r}")
        finished_dirs[job_dir] = job_id
        token = case.kind.removeprefix("alias ")
        try:
            out = (Path(job_dir) / "job.stdout").read_text().strip()
        except OSError as exc:
            problems.append(f"{case.kind}: no output in {job_dir}: {exc}")
            continue
        if out != token:
            problems.append(f"{case.kind}: its directory holds another job's output {out!r}")
    return problems


def test_the_generator_is_deterministic_and_covers_every_kind(tmp_path: Path) -> None:
    """Same seed, same documents; every kind of hostility is in a run."""
    first = Generator(SEED, tmp_path / "a", "1:1")
    second = Generator(SEED, tmp_path / "b", "1:1")
    one = [first.bad() for _ in range(BAD_DOCUMENTS)]
    two = [second.bad() for _ in range(BAD_DOCUMENTS)]
    assert [c.kind for c in one] == [c.kind for c in two]
    kinds = Counter(c.kind.split("=")[0].split(" ")[0] for c in one)
    for expected in ("state", "command", "name", "owner", "project", "environment", "_id",
                     "notify", "cancel_requested", "forged", "odd"):
        assert kinds[expected] > 0, (expected, kinds)
    states = {c.kind.split(" (")[0] for c in one if c.kind.startswith("state=")}
    for state in ENGINE_STATES:
        assert f"state={state!r}" in states, state
    forged = {c.kind.split("=")[0] for c in one if c.kind.startswith("forged ")}
    for field in ("job_dir", "native_id", "notification", "history", "engine_state"):
        assert f"forged {field}" in forged, forged
    aliases = list(first.aliases())
    assert {type(c.doc["_id"]) for c in aliases} == {ObjectId, str, int}
