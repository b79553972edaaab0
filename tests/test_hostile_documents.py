"""Hostile job documents: none stops, misleads or misuses the engine.

The jobs collection is a public interface: portals, scripts and people with a MongoDB shell write
into it. Each test below inserts a hostile document straight into MongoDB, as a portal would, next
to a good job that must still finish, against a real daemon and a real mongod, and asserts the
job contract:

* only a new job may be inserted (``to be built``, or no state); anything else ends at once in
  ``error`` with reason ``invalid_document`` and a message naming the field, and nothing runs;
* the engine's fields (state after insertion, ``job_dir``, ``native_id``, notification state...)
  are the engine's: a client's value is ignored, or refused and recorded in the history;
* an actor survives any document (no actor restarted, the Monitor neither);
* the file system is touched safely (no write outside the jobs directory, output listing
  bounded), signals go only to processes the engine started, mail is header-safe;
* no client value reaches a MongoDB filter as an operator (every command the engine sends is
  read back from MongoDB's profiler);
* health is visible (``execd status`` exits 1 while an actor crash-loops) and the log receiver
  restarts cleanly.

Most tests share one daemon (module scope); the few that hurt a daemon on purpose (killing its
processes, special systems) start their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient

from execution_engine.mongod import free_port, port_in_use
from execution_engine.proc import process_start_time
from execution_engine.reasons import Reason
from execution_engine.systems.base import PID_NAME, SCRIPT_NAME, host_name
from tests.conftest import (
    Engine,
    SmtpServer,
    _alive,
    is_engine_process,
    process_tree,
    scratch_database,
    smtp_server,
)

APPS = Path(__file__).parent / "apps"

REASONS = frozenset(reason.value for reason in Reason)
"""The closed list of ``reason`` values an ended job carries (documented in the job contract)."""

ENDED = ("finished", "error", "killed")
WAIT = 30.0
"""Seconds a test waits for what a healthy engine does in well under a second or two."""


# ---------------------------------------------------------------------- common checks
def engine_config(state_dir: Path, mongo_uri: str, database: str, extra: str = "",
                  engine_extra: str = "") -> str:
    """A daemon configuration like the conftest's, with room for ``[engine]`` keys."""
    mongodb = f"uri = {mongo_uri}\n" if mongo_uri else ""
    return textwrap.dedent(f"""\
        [engine]
        state_dir = {state_dir}
        log_level = DEBUG
        {engine_extra}
        [mongodb]
        {mongodb}database = {database}

        [monitor]
        poll_interval = 0.5
        lease_seconds = 5
        recovery_interval = 0.5
        restart_backoff = 0.2
        """) + textwrap.dedent(extra)


def local_system(slots: int = 4, **keys: object) -> str:
    """The ``[systems]`` section of one Local system (``kill_grace`` 1 s unless given)."""
    options = {"slots": slots, "kill_grace": 1, **keys}
    return "[systems]\n[[local]]\nclass = local\n" + "".join(
        f"{key} = {value}\n" for key, value in options.items())


def make_engine(root: Path, mongo_uri: str, database: str, extra: str = "",
                engine_extra: str = "", *, start: bool = True, embedded_uri: str = ""
                ) -> Engine:
    """A daemon with its state under ``root`` (started unless ``start`` is False)."""
    state_dir = root / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    config = root / "execd.ini"
    config.write_text(engine_config(state_dir, mongo_uri, database, extra, engine_extra))
    engine = Engine(config, state_dir, embedded_uri or mongo_uri, database)
    if start:
        engine.start()
    return engine


def engine_with_plugin(root: Path, mongo_uri: str, database: str, kind: str, *, source: str,
                       extra: str) -> Engine:
    """A daemon with one drop-in plugin module, ``source``, in its ``[plugins] kind`` folder
    (``systems`` or ``routing_rules``)."""
    folder = root / kind
    folder.mkdir()
    (folder / "plugin.py").write_text(textwrap.dedent(source))
    return make_engine(root, mongo_uri, database,
                       f"[plugins]\n{kind} = {folder}\n\n" + textwrap.dedent(extra))


def check_reason(doc: dict[str, Any], state: str = "error", reason: str | None = None,
                 names: str | None = None) -> None:
    """``doc`` ended in ``state`` with a ``reason`` of the closed list (``reason`` if given) and,
    unless it finished, a status message (naming ``names`` if given)."""
    assert doc.get("state") == state, f"expected {state!r}, got document {short(doc)}"
    assert doc.get("reason") in REASONS, f"no reason of the closed list: {short(doc)}"
    if reason is not None:
        assert doc["reason"] == reason, f"expected reason {reason!r}: {short(doc)}"
    message = doc.get("status_message")
    if state != "finished":  # a finished job needs no words
        assert isinstance(message, str) and message, f"no status message: {short(doc)}"
    if names is not None:
        assert isinstance(message, str), short(doc)
        assert names in message, f"the message does not name {names!r}: {short(doc)}"


def short(doc: dict[str, Any] | None, limit: int = 1500) -> str:
    """A document in a failure message, without its bulky parts."""
    if doc is None:
        return "None"
    shown = {k: v for k, v in doc.items() if k not in ("metadata",)}
    text = repr(shown)
    return text if len(text) <= limit else text[:limit] + "..."


def refusal_recorded(doc: dict[str, Any], *words: str) -> bool:
    """Whether the history (or the status message) records a refused client write mentioning
    one of ``words``."""
    texts = [str(h.get("message", "")) for h in doc.get("history") or [] if isinstance(h, dict)]
    texts.append(str(doc.get("status_message", "")))
    return any(word in text for text in texts for word in words)


def engine_processes(engine: Engine) -> dict[str, list[int]]:
    """The daemon's processes by title, the master included: a restart changes a pid."""
    assert engine.process is not None
    found = {k: sorted(v) for k, v in engine.actor_pids().items()}
    found["master"] = [engine.process.pid]
    return found


def daemon_actors(engine: Engine) -> list[dict[str, Any]]:
    """The ``actors`` field of the daemon's document (the daemon health contract)."""
    docs = list(engine.store.daemons.find())
    assert len(docs) == 1, f"expected one daemon document, found {docs}"
    actors = docs[0].get("actors")
    assert isinstance(actors, list) and actors, (
        f"the daemon document has no 'actors' list: {docs[0]}")
    return actors


def wait_docs(engine: Engine, ids: list[Any], predicate: Callable[[dict[str, Any]], bool],
              timeout: float = WAIT, what: str = "") -> list[dict[str, Any]]:
    """The documents of ``ids`` once ``predicate`` holds for each (AssertionError after
    ``timeout`` showing them)."""
    deadline = time.monotonic() + timeout
    while True:
        docs = {d["_id"]: d for d in engine.store.jobs.find({"_id": {"$in": ids}})}
        if len(docs) == len(ids) and all(predicate(docs[i]) for i in ids):
            return [docs[i] for i in ids]
        if time.monotonic() > deadline:
            shown = "\n".join(short(docs.get(i)) for i in ids)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{shown}\n"
                                 + engine.log_file.read_text()[-3000:])
        time.sleep(0.05)


def ended(doc: dict[str, Any]) -> bool:
    """Ended by the engine: a state a client inserts (``finished``) comes without a reason."""
    return doc.get("state") in ENDED and "reason" in doc


def wait_ended(engine: Engine, ids: list[Any], timeout: float = WAIT) -> list[dict[str, Any]]:
    return wait_docs(engine, ids, ended, timeout, "the jobs to end")


def native_id_of(pid: int) -> str:
    return f"{pid}:{process_start_time(pid)}"


@contextlib.contextmanager
def foreign_sleep() -> Iterator[subprocess.Popen[bytes]]:
    """A ``sleep`` in a process group of its own that the engine never started."""
    sentinel = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield sentinel
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sentinel.pid, signal.SIGKILL)
        sentinel.wait(10)


def job_pid(job_dir: Path) -> int | None:
    """The pid the job script recorded, if it started."""
    try:
        return int((job_dir / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def process_command(pid: int) -> str:
    """``pid``'s whole command line and working directory ("" once it is gone): what tells a job's
    process from an unrelated one that reused its pid."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace") + " " + str(Path(f"/proc/{pid}/cwd").readlink()))
    except OSError:
        return ""


def kill_job_processes(job_dirs: list[Path]) -> None:
    """End what jobs of a failing test left running (their recorded process groups)."""
    for job_dir in job_dirs:
        pid = job_pid(job_dir)
        if pid is not None and _alive(pid) and str(job_dir) in process_command(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def tree_snapshot(top: Path, skip: Path | None = None) -> dict[str, tuple[int, int, int]]:
    """Every path under ``top`` (but ``skip``) with its type, size and mtime; links not
    followed."""
    snapshot: dict[str, tuple[int, int, int]] = {}
    for root, dirs, files in os.walk(top):
        if skip is not None:
            dirs[:] = [d for d in dirs if Path(root, d) != skip]
        for name in dirs + files:
            path = Path(root, name)
            with contextlib.suppress(OSError):
                info = path.lstat()
                snapshot[str(path.relative_to(top))] = (info.st_mode, info.st_size,
                                                        info.st_mtime_ns)
    return snapshot


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stop_engine(engine: Engine) -> None:
    """Warm stop (failing the test if it fails); a daemon that does not stop is killed, so that
    a failed test leaves no process behind."""
    try:
        engine.stop()
    except BaseException:
        if engine.process is not None:
            pids = set(engine.pids_seen) | set(process_tree(engine.process.pid))
            for pid in filter(is_engine_process, pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        raise
    finally:
        engine.close()


# ---------------------------------------------------------------------- the shared daemon
LOOPY_APP = """\
    # Makes a job directory full of symbolic link loops; its outputs are globbed at any depth.
    name = loopy
    outputs = **/*.txt, out.txt
    """
LOOPY_SCRIPT = """\
    mkdir -p d/e
    echo hi >out.txt
    echo deep >d/e/deep.txt
    ln -s . loop
    ln -s .. d/up
    ln -s ../.. d/e/up
    ln -s . d/e/self
    """


@dataclass
class Hostile:
    """The shared daemon and what a test inserted (removed after the test)."""

    engine: Engine
    smtp: SmtpServer
    root: Path
    outside: Path
    inputs: Path
    inserted: list[Any] = field(default_factory=list)
    job_dirs: list[Path] = field(default_factory=list)

    def insert(self, doc: dict[str, Any]) -> Any:
        job_id = self.engine.store.jobs.insert_one(doc).inserted_id
        self.inserted.append(job_id)
        return job_id

    def good(self, *command: str) -> Any:
        return self.insert({"state": "to be built",
                            "command": list(command or ("echo", "good"))})

    def client_update(self, job_id: Any, update: dict[str, Any]) -> None:
        """A client's raw update, as a portal or a MongoDB shell writes it."""
        assert self.engine.store.jobs.update_one({"_id": job_id}, update).matched_count == 1

    def job_dir(self, job_id: Any) -> Path:
        doc = wait_docs(self.engine, [job_id], lambda d: bool(d.get("job_dir")), what="job_dir")
        path = Path(doc[0]["job_dir"])
        self.job_dirs.append(path)
        return path

    def wait_started(self, job_id: Any) -> Path:
        """The job's directory once its process has started and recorded its pid."""
        job_dir = self.job_dir(job_id)
        self.engine.wait_for(lambda: job_pid(job_dir) is not None, WAIT, "the job to start")
        return job_dir


@pytest.fixture(scope="module")
def module_smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str,
           module_smtp: SmtpServer) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside"
    outside.mkdir()
    inputs = root / "inputs"
    inputs.mkdir()
    scratch = contextlib.ExitStack()
    database = scratch.enter_context(scratch_database(mongo_uri))
    extra = textwrap.dedent(f"""\
        [notification]
        smtp_host = {module_smtp.host}
        smtp_port = {module_smtp.port}
        retry_backoff = 0.5
        max_attempts = 2

        """) + local_system(slots=8)
    engine = make_engine(root, mongo_uri, database, extra, f"input_dirs = {inputs}\n")
    loopy = root / "apps" / "loopy"
    loopy.mkdir(parents=True)
    (loopy / "app.ini").write_text(textwrap.dedent(LOOPY_APP))
    (loopy / "execute.sh").write_text(textwrap.dedent(LOOPY_SCRIPT))
    for app in (APPS / "square", APPS / "linecount", loopy):
        engine.cli("app", "add", str(app))
    hostile = Hostile(engine, module_smtp, root, outside, inputs)
    with scratch:
        try:
            yield hostile
        finally:
            stop_engine(engine)


@pytest.fixture
def hostile(shared: Hostile) -> Iterator[Hostile]:
    """The shared daemon for one test; what the test inserted is removed afterwards, so that a
    document that still hurts the engine does not fail the next tests too."""
    shared.inserted = []
    shared.job_dirs = []
    shared.smtp.messages.clear()
    yield shared
    kill_job_processes(shared.job_dirs)
    for job_dir in shared.job_dirs:  # links planted by a job may hang a listing
        for root, dirs, files in os.walk(job_dir):
            for name in dirs + files:
                if Path(root, name).is_symlink():
                    with contextlib.suppress(OSError):
                        Path(root, name).unlink()
    if shared.inserted:
        shared.engine.store.jobs.delete_many({"_id": {"$in": shared.inserted}})
        shared.engine.store.jobs.delete_many({"parent": {"$in": shared.inserted}})
    # A test that hurt the daemon leaves it for the next one only once it works again.
    assert shared.engine.process is not None and shared.engine.process.poll() is None


def assert_survived(engine: Engine, before: dict[str, list[int]]) -> None:
    """No process of the daemon was restarted since ``before``."""
    after = engine_processes(engine)
    assert after == before, f"daemon processes restarted: before {before}, after {after}\n" \
                            + engine.log_file.read_text()[-3000:]


# ---------------------------------------------------------------------- documents
def test_01_operator_as_state_does_not_stop_engine(hostile: Hostile) -> None:
    engine = hostile.engine
    before = engine_processes(engine)
    bad = hostile.insert({"state": {"$set": 1}, "command": ["true"]})
    bad_in = hostile.insert({"state": {"$in": ["to be built"]}, "command": ["true"]})
    good = hostile.good()
    docs = wait_ended(engine, [bad, bad_in, good])
    check_reason(docs[0], reason="invalid_document", names="state")
    check_reason(docs[1], reason="invalid_document", names="state")
    check_reason(docs[2], "finished", "completed")
    time.sleep(1.5)  # a crash-looping Monitor is restarted every couple of seconds
    assert_survived(engine, before)


def test_02_submittable_document_without_engine_fields_runs_nothing(hostile: Hostile) -> None:
    engine = hostile.engine
    before = engine_processes(engine)
    marker = hostile.outside / "ran-02"
    forged_dir = hostile.outside / "forged-02"
    (forged_dir / ".execd").mkdir(parents=True)
    script = forged_dir / SCRIPT_NAME
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    no_dir = hostile.insert({"state": "to be submitted", "command": ["touch", str(marker)]})
    own_dir = hostile.insert({"state": "to be submitted", "command": ["true"],
                              "job_dir": str(forged_dir)})
    good = hostile.good()
    docs = wait_ended(engine, [no_dir, own_dir, good])
    check_reason(docs[0], reason="invalid_document", names="state")
    check_reason(docs[1], reason="invalid_document", names="state")
    check_reason(docs[2], "finished")
    time.sleep(1)
    assert not marker.exists(), "a script the engine never built was run"
    assert sorted(p.name for p in forged_dir.rglob("*")) == [".execd", "job.sh"], \
        "the engine wrote into a client's job_dir"
    assert_survived(engine, before)


def test_03_huge_document_or_bad_history_does_not_stall_building(hostile: Hostile) -> None:
    engine = hostile.engine
    before = engine_processes(engine)
    huge = hostile.insert({"state": "to be built", "command": ["true"],
                           "metadata": {"blob": "x" * (16 * 1024 * 1024 - 4096)}})
    history = hostile.insert({"state": "to be built", "command": ["true"], "history": "x"})
    history_obj = hostile.insert({"state": "to be built", "command": ["true"],
                                  "history": {"$push": 1}})
    goods = [hostile.good() for _ in range(5)]
    docs = wait_ended(engine, [huge, history, history_obj, *goods])
    check_reason(docs[0], reason="invalid_document")
    check_reason(docs[1], reason="invalid_document", names="history")
    check_reason(docs[2], reason="invalid_document", names="history")
    for doc in docs[3:]:
        check_reason(doc, "finished")
    assert_survived(engine, before)


def test_04_crlf_in_owner_or_name_neither_crashes_nor_injects_mail(hostile: Hostile) -> None:
    engine = hostile.engine
    before = engine_processes(engine)
    bad_owner = hostile.insert({"state": "to be built", "command": ["true"],
                                "owner": "victim@example.org\r\nBcc: evil@example.org"})
    bad_name = hostile.insert({"state": "to be built", "command": ["true"],
                               "owner": "alice@example.org",
                               "name": "report\r\nBcc: evil2@example.org\r\nX-Evil: 1"})
    settled = ("sent", "failed", "none")
    docs = wait_docs(engine, [bad_owner, bad_name],
                     lambda d: ended(d) and (d.get("notification") or {}).get("state")
                     in settled, what="the notifications to settle")
    assert docs[1]["state"] == "finished", short(docs[1])
    assert docs[1]["notification"]["state"] == "sent", (
        "a job with a valid owner and a name holding CR/LF must still be notified: "
        + short(docs[1]))
    messages = list(hostile.smtp.messages)
    for message in messages:
        recipients = str(message["X-Rcpt"])
        assert "evil" not in recipients, f"mail header injection: sent to {recipients}"
        assert message["Bcc"] is None and message["X-Evil"] is None, (
            f"mail header injection: {message.items()}")
        assert "\r" not in str(message["Subject"]) and "\n" not in str(message["Subject"])
    assert [str(m["X-Rcpt"]) for m in messages
            if m["X-Execd-Job"] == str(bad_name)] == ["alice@example.org"]
    assert_survived(engine, before)


def test_05_output_glob_over_symlink_loops_is_bounded(hostile: Hostile) -> None:
    engine = hostile.engine
    before = engine_processes(engine)
    job = hostile.insert({"state": "to be built", "app": {"name": "loopy"}, "inputs": []})
    plain = hostile.insert({"state": "to be built", "command": [
        "sh", "-c", "echo hi >out.txt; mkdir d; ln -s . loop; ln -s .. d/up; ln -s / root; "
                    "ln -s /etc/passwd passwd"]})
    good = hostile.good()
    deadline = time.monotonic() + WAIT
    status_pids = engine.actor_pids("status-actor").get("status-actor", [])
    while True:
        docs = list(engine.store.jobs.find({"_id": {"$in": [job, plain, good]}}))
        if len(docs) == 3 and all(ended(d) for d in docs):
            break
        grown = [p for p in status_pids if rss_bytes(p) > 400 * 1024 * 1024]
        if grown or time.monotonic() > deadline:
            for pid in status_pids:  # spare the shared machine a runaway listing
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(
                f"the Status actor {'grew past 400 MB' if grown else 'hung'} listing the "
                f"outputs of a job directory holding symbolic link loops: "
                + "\n".join(short(d) for d in docs))
        time.sleep(0.1)
    by_id = {d["_id"]: d for d in docs}
    check_reason(by_id[good], "finished")
    for job_id in (job, plain):
        doc = by_id[job_id]
        assert doc["state"] == "finished", short(doc)
        job_dir = Path(doc["job_dir"])
        paths = [o["path"] for o in doc.get("outputs", [])]
        assert len(paths) <= 1001, f"{len(paths)} outputs listed"
        for path in paths:
            assert not (job_dir / path).is_symlink(), (
                f"a symbolic link is listed as an output: {path} -> "
                f"{(job_dir / path).readlink()}")
            assert (job_dir / path).resolve().is_relative_to(job_dir.resolve()), path
            assert not any((job_dir / Path(*Path(path).parts[:i])).is_symlink()
                           for i in range(1, len(Path(path).parts))), (
                f"an output listed through a symbolic link: {path}")
        assert "out.txt" in paths, short(doc)
    assert sorted(o["path"] for o in by_id[job]["outputs"]) == ["d/e/deep.txt", "out.txt"]
    assert_survived(engine, before)


def test_06_forged_running_document_cannot_signal_a_foreign_process(hostile: Hostile) -> None:
    engine = hostile.engine
    before = engine_processes(engine)
    with foreign_sleep() as sentinel:
        forged = hostile.insert({
            "state": "running", "command": ["true"], "system": "local", "host": host_name(),
            "native_id": native_id_of(sentinel.pid), "job_dir": str(hostile.outside),
            "cancel_requested": True})
        forged_sub = hostile.insert({
            "state": "submitted", "command": ["true"], "system": "local", "host": host_name(),
            "native_id": native_id_of(sentinel.pid), "job_dir": str(hostile.outside),
            "cancel_requested": True, "kill": {"term_at": None}})
        good = hostile.good()
        docs = wait_ended(engine, [forged, forged_sub, good])
        check_reason(docs[0], reason="invalid_document", names="state")
        check_reason(docs[1], reason="invalid_document", names="state")
        check_reason(docs[2], "finished")
        time.sleep(2.5)  # past the kill grace: a KILL would follow the TERM
        assert sentinel.poll() is None, (
            f"the engine signalled a process it never started: {sentinel.returncode}")
    assert_survived(engine, before)


def test_06_rewritten_native_id_cannot_redirect_a_cancel(hostile: Hostile) -> None:
    engine = hostile.engine
    with foreign_sleep() as sentinel:
        job = hostile.insert({"state": "to be built", "command": ["sleep", "30"]})
        job_dir = hostile.wait_started(job)
        own = job_pid(job_dir)
        assert own is not None
        hostile.client_update(job, {"$set": {"native_id": native_id_of(sentinel.pid)}})
        time.sleep(0.5)
        engine.store.request_cancel(job)
        (doc,) = wait_ended(engine, [job])
        check_reason(doc, "killed", "cancelled")
        time.sleep(2.5)  # past the kill grace
        assert sentinel.poll() is None, "a cancel was redirected to a process of the client's"
        assert not _alive(own), "the job's own process was not killed"


def test_07_aliased_ids_do_not_share_a_job_directory(hostile: Hostile) -> None:
    engine = hostile.engine
    oid = ObjectId()
    number = 424200 + int(time.time()) % 1000
    pairs = [(oid, str(oid)), (number, str(number))]
    ids = []
    for first, second in pairs:
        for job_id in (first, second):
            token = f"token-{type(job_id).__name__}-{job_id}"
            ids.append(hostile.insert({"_id": job_id, "state": "to be built",
                                       "command": ["sh", "-c", f"sleep 0.3; echo {token}"]}))
    good = hostile.good()
    docs = wait_ended(engine, [*ids, good])
    check_reason(docs[-1], "finished")
    dirs: dict[str, Any] = {}
    for doc in docs[:-1]:
        if doc["state"] == "finished":
            token = f"token-{type(doc['_id']).__name__}-{doc['_id']}"
            job_dir = doc["job_dir"]
            assert job_dir not in dirs, (
                f"jobs {dirs.get(job_dir)!r} and {doc['_id']!r} share {job_dir}")
            dirs[job_dir] = doc["_id"]
            assert (Path(job_dir) / "job.stdout").read_text().strip() == token, (
                f"job {doc['_id']!r} of type {type(doc['_id']).__name__} has another job's "
                f"output")
        else:
            check_reason(doc, reason="invalid_document", names="_id")
    for first, second in pairs:
        states = [d["state"] for d in docs if d["_id"] in (first, second)]
        assert states.count("finished") <= 1 or len({
            d["job_dir"] for d in docs if d["_id"] in (first, second)}) == 2, states


def test_08_forged_subjob_does_not_corrupt_a_split_master(hostile: Hostile) -> None:
    engine = hostile.engine
    master = ObjectId()
    forged = hostile.insert({"_id": f"{master}.7", "state": "to be built",
                             "command": ["sh", "-c", "echo forged >square.txt; exit 3"],
                             "parent": master, "index": 7})
    hostile.insert({"_id": master, "state": "to be built", "app": {"name": "square"},
                    "inputs": [], "splitter": {"input": "n", "range": [0, 3]}})
    docs = wait_ended(engine, [master, forged], timeout=60)
    doc = docs[0]
    assert doc["state"] == "finished", f"the master was corrupted: {short(doc)}"
    assert doc["subjobs"]["total"] == 3, short(doc)
    assert doc["subjobs"]["counts"] == {"finished": 3}, short(doc)
    assert [o["path"] for o in doc["outputs"]] == [f"subjobs/{i}/square.txt" for i in range(3)]
    assert docs[1]["state"] in ENDED and docs[1].get("reason") in REASONS, short(docs[1])


def test_09_symlink_planted_at_a_job_directory_is_not_followed(hostile: Hostile) -> None:
    engine = hostile.engine
    jobs_dir = engine.jobs_dir
    (jobs_dir / "default").mkdir(parents=True, exist_ok=True)
    target_job = hostile.outside / "job-target"
    target_project = hostile.outside / "project-target"
    target_job.mkdir()
    target_project.mkdir()
    job_id = f"planted-{uuid.uuid4().hex[:8]}"
    project = f"planted{uuid.uuid4().hex[:8]}"
    (jobs_dir / "default" / job_id).symlink_to(target_job)
    (jobs_dir / project).symlink_to(target_project)
    hostile.job_dirs += [jobs_dir / "default" / job_id]
    at_job = hostile.insert({"_id": job_id, "state": "to be built",
                             "command": ["sh", "-c", "echo leaked >leaked.txt"]})
    at_project = hostile.insert({"state": "to be built", "project": project,
                                 "command": ["sh", "-c", "echo leaked >leaked.txt"]})
    good = hostile.good()
    docs = wait_ended(engine, [at_job, at_project, good])
    check_reason(docs[2], "finished")
    try:
        assert list(target_job.iterdir()) == [], "the engine wrote through a planted link"
        assert list(target_project.iterdir()) == [], "the engine wrote through a planted link"
        for doc in docs[:2]:
            assert doc.get("reason") in REASONS, short(doc)
            if doc["state"] == "finished":
                job_dir = Path(doc["job_dir"])
                assert not job_dir.is_symlink() and not job_dir.parent.is_symlink()
                assert job_dir.resolve().is_relative_to(jobs_dir.resolve())
            else:
                check_reason(doc)
    finally:
        (jobs_dir / "default" / job_id).unlink(missing_ok=True)
        (jobs_dir / project).unlink(missing_ok=True)


def test_10_forged_notification_state_sends_one_mail(hostile: Hostile) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built", "command": ["sleep", "1"],
                          "owner": "carol@example.org",
                          "notification": {"state": "due", "attempts": 0}})
    wait_docs(engine, [job], lambda d: ended(d) and d["notification"]["state"] in
              ("sent", "failed"), what="the notification")
    time.sleep(1)
    mails = [m for m in hostile.smtp.messages if m["X-Execd-Job"] == str(job)]
    assert len(mails) == 1, f"{len(mails)} mails for one job: {[m['Subject'] for m in mails]}"
    assert "finished" in str(mails[0]["Subject"]), mails[0]["Subject"]


def test_10_one_recipient_per_mail_whatever_owner_or_notify_say(hostile: Hostile) -> None:
    engine = hostile.engine
    listed_owner = hostile.insert({"state": "to be built", "command": ["true"],
                                   "owner": "a@example.org,b@example.org"})
    listed_notify = hostile.insert({"state": "to be built", "command": ["true"],
                                    "owner": "dave@example.org",
                                    "notify": "c@example.org,d@example.org"})
    docs = wait_docs(engine, [listed_owner, listed_notify],
                     lambda d: ended(d) and (d.get("notification") or {}).get("state") in
                     ("sent", "failed", "none"), what="the notifications")
    check_reason(docs[1], reason="invalid_document", names="notify")
    for message in hostile.smtp.messages:
        recipients = str(message["X-Rcpt"]).split(",")
        assert len(recipients) == 1, f"one mail to several recipients: {recipients}"
        assert recipients[0] not in ("b@example.org", "c@example.org", "d@example.org"), \
            recipients


@pytest.mark.parametrize("state", ["submitting", "building", "finished", "killed", "pending",
                                   "hold", ["to be built"], {"$ne": None}, ""])
def test_10_only_a_new_job_may_be_inserted(hostile: Hostile, state: Any) -> None:
    engine = hostile.engine
    before = engine_processes(engine)
    marker = hostile.outside / f"ran-10-{uuid.uuid4().hex[:6]}"
    bad = hostile.insert({"state": state, "command": ["touch", str(marker)]})
    good = hostile.good()
    docs = wait_ended(engine, [bad, good])
    check_reason(docs[0], reason="invalid_document", names="state")
    check_reason(docs[1], "finished")
    assert not marker.exists(), "a job inserted in an engine state ran"
    assert_survived(engine, before)


@pytest.mark.parametrize("state", ["running", "to be submitted", "finished"])
def test_10_a_forged_engine_state_at_insertion_is_not_trusted(hostile: Hostile, state: str
                                                              ) -> None:
    """``engine_state`` is the engine's record: a client inserting it beside a state of its
    choice gets no further than with the state alone."""
    engine = hostile.engine
    marker = hostile.outside / f"ran-10e-{uuid.uuid4().hex[:6]}"
    with foreign_sleep() as sentinel:
        bad = hostile.insert({
            "state": state, "engine_state": state, "command": ["touch", str(marker)],
            "system": "local", "host": host_name(), "native_id": native_id_of(sentinel.pid),
            "cancel_requested": state == "running"})
        good = hostile.good()
        docs = wait_ended(engine, [bad, good])
        check_reason(docs[0], reason="invalid_document", names="state")
        check_reason(docs[1], "finished")
        time.sleep(1.5)  # past the kill grace
        assert sentinel.poll() is None, "a forged engine_state let a cancel signal a stranger"
    assert not marker.exists(), "a job inserted with a forged engine_state ran"


def test_11_state_rewritten_during_a_run_is_refused_and_the_job_not_rerun(
        hostile: Hostile) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built",
                          "command": ["sh", "-c", "echo run >>runs.txt; sleep 2"]})
    job_dir = hostile.wait_started(job)
    hostile.client_update(job, {"$set": {"state": "to be submitted"}})
    (doc,) = wait_ended(engine, [job])
    check_reason(doc, "finished", "completed")
    time.sleep(1)
    assert (job_dir / "runs.txt").read_text() == "run\n", "the job ran again"
    assert doc.get("engine_state") == doc["state"], short(doc)
    assert refusal_recorded(doc, "to be submitted"), (
        f"the refused write is not in the history: {doc.get('history')}")


def test_11_state_rewritten_to_an_end_leaves_the_job_tracked(hostile: Hostile) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built", "command": ["sleep", "30"]})
    job_dir = hostile.wait_started(job)
    pid = job_pid(job_dir)
    hostile.client_update(job, {"$set": {"state": "finished"}})
    time.sleep(1)
    engine.store.request_cancel(job)
    (doc,) = wait_docs(engine, [job], lambda d: d.get("state") == "killed", what="the cancel")
    check_reason(doc, "killed", "cancelled")
    assert pid is not None
    engine.wait_for(lambda: not _alive(pid), 10, "the job's process to end")
    assert refusal_recorded(doc, "finished"), doc.get("history")


def test_11_unset_state_is_noticed_at_once(hostile: Hostile) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built", "command": ["sleep", "2"]})
    hostile.wait_started(job)
    hostile.client_update(job, {"$unset": {"state": ""}})
    (doc,) = wait_docs(engine, [job], lambda d: d.get("state") == "finished", timeout=15,
                       what="the job to finish (not wait for the 300 s sweep)")
    check_reason(doc, "finished", "completed")


@pytest.mark.parametrize("value", ["yes", 1])
def test_11_malformed_cancel_request_is_not_ignored_silently(hostile: Hostile, value: Any
                                                             ) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built", "command": ["sleep", "30"]})
    hostile.wait_started(job)
    hostile.client_update(job, {"$set": {"cancel_requested": value}})
    (doc,) = wait_docs(engine, [job], lambda d: d.get("state") == "killed"
                       or refusal_recorded(d, "cancel_requested"), timeout=15,
                       what="the malformed cancel request to be acted on or refused")
    if doc["state"] != "killed":
        assert doc["state"] == "running", short(doc)


def test_11_command_changed_after_building_is_not_shown_as_run(hostile: Hostile) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built", "command": ["sleep", "1.5"]})
    hostile.wait_started(job)
    hostile.client_update(job, {"$set": {"command": ["echo", "forged-command"]}})
    (doc,) = wait_ended(engine, [job])
    check_reason(doc, "finished")
    shown = engine.cli("show", str(job)).stdout
    assert "forged-command" not in shown, shown
    assert "sleep" in shown, shown


# ---------------------------------------------------------------------- splits and paths
def test_minor_a_huge_range_ends_in_error_naming_the_splitter(hostile: Hostile) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built", "app": {"name": "square"}, "inputs": [],
                          "splitter": {"input": "n", "range": [-(2 ** 63), 2 ** 63 - 1]}})
    (doc,) = wait_ended(engine, [job])
    check_reason(doc, reason="invalid_document", names="splitter")
    assert "internal" not in doc["status_message"], doc["status_message"]


def test_minor_a_nul_in_a_path_ends_in_error_naming_the_field(hostile: Hostile) -> None:
    engine = hostile.engine
    job = hostile.insert({"state": "to be built", "app": {"name": "linecount"},
                          "inputs": [{"name": "text", "path": f"{hostile.inputs}/a\0b.txt"}]})
    (doc,) = wait_ended(engine, [job])
    check_reason(doc, reason="invalid_document", names="text")
    assert "internal" not in doc["status_message"], doc["status_message"]


def test_minor_a_refused_lines_split_leaves_no_chunk_files(hostile: Hostile) -> None:
    engine = hostile.engine
    text = hostile.inputs / "many-lines.txt"
    text.write_text("".join(f"{i}\n" for i in range(10_050)))
    job = hostile.insert({"state": "to be built", "app": {"name": "linecount"},
                          "inputs": [{"name": "text", "path": str(text)}],
                          "splitter": {"input": "text", "lines": 1}})
    (doc,) = wait_ended(engine, [job], timeout=60)
    check_reason(doc, names="splitter")
    assert doc["reason"] in ("invalid_document", "build_failed"), short(doc)
    master_dir = engine.jobs_dir / "default" / str(job)
    left = [p for p in master_dir.rglob("*") if p.is_file()] if master_dir.exists() else []
    assert len(left) < 10, f"{len(left)} files left behind in {master_dir}"


# ---------------------------------------------------------------------- own daemons
@pytest.fixture
def own_root(tmp_path: Path, database: str) -> tuple[Path, str]:
    """A directory and a database of the test's own."""
    return tmp_path, database


@contextlib.contextmanager
def running(engine: Engine, job_dirs: list[Path] | None = None) -> Iterator[Engine]:
    try:
        yield engine
    finally:
        if job_dirs:
            kill_job_processes(job_dirs)
        stop_engine(engine)


IN_DOUBT_SYSTEM = """\
    \"\"\"A Local system whose first submission of a job times out after starting it (as a
    batch command that timed out but queued the job), and that cannot be asked for a few
    seconds after that.\"\"\"
    import time
    from typing import ClassVar
    from execution_engine import execution_system
    from execution_engine.errors import SystemUnavailable
    from execution_engine.systems.local import LocalSystem

    @execution_system
    class InDoubtLocal(LocalSystem):
        kind: ClassVar[str] = "indoubt"

        def run(self, job):
            submission = super().run(job)
            marker = job.job_dir / ".execd" / "in-doubt"
            if not marker.exists():
                marker.touch()
                raise SystemUnavailable(self.name, "submission timed out")
            return submission

        def find(self, job):
            marker = job.job_dir / ".execd" / "in-doubt"
            if marker.exists() and time.time() - marker.stat().st_mtime < 3:
                raise SystemUnavailable(self.name, "still not answering")
            return super().find(job)
    """


def test_12_cancel_during_an_in_doubt_submission_asks_the_system(
        own_root: tuple[Path, str], mongo_uri: str) -> None:
    root, database = own_root
    engine = engine_with_plugin(root, mongo_uri, database, "systems", source=IN_DOUBT_SYSTEM,
                                extra="""\
        [systems]
        [[doubtful]]
        class = indoubt
        slots = 2
        kill_grace = 1
        """)
    job_dirs: list[Path] = []
    with running(engine, job_dirs):
        job = engine.submit("sleep", "60")
        doc = wait_docs(engine, [job], lambda d: bool(d.get("job_dir")), what="job_dir")[0]
        job_dir = Path(doc["job_dir"])
        job_dirs.append(job_dir)
        engine.wait_for(lambda: (job_dir / ".execd" / "in-doubt").exists()
                        and job_pid(job_dir) is not None, WAIT, "the in-doubt submission")
        pid = job_pid(job_dir)
        assert pid is not None
        engine.store.request_cancel(job)
        (doc,) = wait_ended(engine, [job])
        check_reason(doc, "killed", "cancelled")
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), (
            f"the job ended {doc['state']} but its process {pid} still runs, untracked: "
            + short(doc))


def test_13_running_is_recorded_as_soon_as_the_process_starts(
        own_root: tuple[Path, str], mongo_uri: str) -> None:
    root, database = own_root
    engine = make_engine(root, mongo_uri, database, local_system(slots=2, slot_wait=15))
    job_dirs: list[Path] = []
    with running(engine, job_dirs):
        ids = engine.store.jobs.insert_many(
            [{"state": "to be built", "command": ["sleep", "60"]} for _ in range(6)]
        ).inserted_ids
        docs = wait_docs(engine, ids, lambda d: bool(d.get("job_dir")), what="builds")
        job_dirs += [Path(d["job_dir"]) for d in docs]
        engine.wait_for(lambda: any(job_pid(d) for d in job_dirs), WAIT, "a job to start")
        first = next(i for i, d in zip(ids, job_dirs, strict=True) if job_pid(d))
        # The Submit actor is now waiting up to slot_wait (15 s) for a third slot: what it
        # started meanwhile must already be recorded.
        (doc,) = wait_docs(engine, [first], lambda d: d.get("state") == "running"
                           and bool(d.get("native_id")), timeout=5,
                           what="'running' to be recorded for a started job")
        engine.store.request_cancel(first)
        (doc,) = wait_docs(engine, [first], lambda d: d.get("state") == "killed", timeout=8,
                           what="the cancel of a job that had just started")
        check_reason(doc, "killed", "cancelled")
        for job_id in ids:
            engine.store.request_cancel(job_id)
        wait_ended(engine, ids, timeout=60)


def test_14_log_receiver_restarts_cleanly_after_sigkill(
        own_root: tuple[Path, str], mongo_uri: str) -> None:
    root, database = own_root
    engine = make_engine(root, mongo_uri, database, "[systems]\n[[local]]\nclass = local\n")
    with running(engine):
        (receiver,) = engine.actor_pids("log-receiver")["log-receiver"]
        time.sleep(0.5)  # idle: the receiver waits in queue.get()
        os.kill(receiver, signal.SIGKILL)
        engine.wait_for(lambda: any(p != receiver for p in engine.actor_pids(
            "log-receiver").get("log-receiver", [])), WAIT, "a new log receiver")
        job = engine.submit("echo", "logged")
        wait_ended(engine, [job])
        engine.wait_for(lambda: str(job) in engine.log_file.read_text(), 15,
                        "the new log receiver to write records")


def test_15_status_exits_nonzero_while_an_actor_crash_loops(
        own_root: tuple[Path, str], mongo_uri: str) -> None:
    root, database = own_root
    engine = make_engine(root, mongo_uri, database, "[systems]\n[[local]]\nclass = local\n")
    with running(engine):
        healthy = engine.cli("status", check=False)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "submit" in healthy.stdout, healthy.stdout
        killed: set[int] = set()
        deadline = time.monotonic() + 40
        result = healthy
        while time.monotonic() < deadline:
            for pid in engine.actor_pids("submit-actor").get("submit-actor", []):
                if pid not in killed:
                    killed.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if len(killed) >= 3:
                result = engine.cli("status", check=False)
                if result.returncode != 0:
                    break
            time.sleep(0.05)
        assert result.returncode == 1, (
            f"execd status exited {result.returncode} while the submit actor was killed "
            f"{len(killed)} times:\n{result.stdout}{result.stderr}")
        assert "failing" in result.stdout and "submit" in result.stdout, result.stdout
        actors = {a["name"]: a for a in daemon_actors(engine)}
        assert actors["submit-0"]["state"] == "failing", actors
        assert actors["submit-0"]["restarts"] >= 2, actors
        assert isinstance(actors["submit-0"]["last_exit"], str), actors
        assert actors["building-0"]["state"] == "running", actors


def test_minor_embedded_port_is_free_after_the_master_is_killed(
        own_root: tuple[Path, str]) -> None:
    root, database = own_root
    port = free_port()
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    engine = make_engine(root, "", database, """\
        [systems]
        [[local]]
        class = local
        """, embedded_uri=uri, start=False)
    config = engine.config_path
    config.write_text(config.read_text().replace(
        f"database = {database}", f"database = {database}\nembedded_port = {port}"))
    data_dir = str(engine.state_dir)
    try:
        engine.start()
        first = engine.submit("echo", "one")
        wait_ended(engine, [first], timeout=60)
        assert engine.process is not None
        os.kill(engine.process.pid, signal.SIGKILL)
        engine.process.wait(10)
        engine.start()  # the same configuration: the same embedded port
        second = engine.submit("echo", "two")
        (doc,) = wait_ended(engine, [second], timeout=60)
        assert doc["state"] == "finished", short(doc)
        engine.stop()
        deadline = time.monotonic() + 15
        while port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_in_use(port), f"the embedded port {port} is still in use after stop"
    finally:
        with contextlib.suppress(Exception):  # the test's own failure is what matters
            stop_engine(engine)
        _kill_mongods_of(data_dir)


CRASHING_RULE = """\
    \"\"\"A routing rule that kills the process deciding the route of one job: a document that
    crashes the actor handling it, whatever the actor's own care.\"\"\"
    import os
    from execution_engine import routing_rule

    @routing_rule("crash_on_poison_pill")
    def crash_on_poison_pill(job):
        if job.get("name") == "poison-pill":
            os._exit(3)
        return True
    """


def test_a_document_that_crashes_an_actor_is_quarantined(own_root: tuple[Path, str],
                                                         mongo_uri: str) -> None:
    """A document that kills its actor (twice) is set aside with a reason; the actor is not
    restarted again and again, and the other jobs go on."""
    root, database = own_root
    engine = engine_with_plugin(root, mongo_uri, database, "routing_rules",
                                source=CRASHING_RULE, extra=local_system() + textwrap.dedent("""
        [routes]
        [[all]]
        system = local
        rules = crash_on_poison_pill
        """))
    with running(engine):
        pill = engine.submit("true", name="poison-pill")
        goods = [engine.submit("echo", str(i)) for i in range(5)]

        def settled(doc: dict[str, Any]) -> bool:
            return ended(doc) or any("quarantin" in key for key in doc)

        docs = wait_docs(engine, [pill, *goods], settled, timeout=45,
                         what="the poison pill to be set aside and the other jobs to finish")
        for doc in docs[1:]:
            check_reason(doc, "finished")
        if ended(docs[0]):
            check_reason(docs[0])
        time.sleep(2)
        later = [engine.submit("echo", "later") for _ in range(3)]
        for doc in wait_ended(engine, later):
            check_reason(doc, "finished")
        actors = {a["name"]: a for a in daemon_actors(engine)}
        assert all(a["state"] != "failing" for a in actors.values()), actors
        assert max(int(a.get("restarts") or 0) for a in actors.values()) <= 2, (
            f"the poison pill was retried until its actor crash-looped: {actors}")


POISONED_FIELDS = ("state", "engine_state", "system", "host", "native_id", "route", "project",
                   "owner", "name", "parent", "cancel_requested", "job_dir", "lease.token",
                   "lease.owner", "notification.state", "submission.retry_at", "kill.term_at",
                   "hold_requested", "command")
"""Fields that, in a client's document, hold a query operator in the filter test below."""


def poison(field: str) -> dict[str, Any]:
    """A query operator as a value: matched raw, it would select other documents."""
    return {"$ne": f"POISON-{field}"}


def poisoned(field: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"state": "to be built", "command": ["true"]}
    parent, _, child = field.partition(".")
    doc[parent] = {child: poison(field)} if child else poison(field)
    return doc


def raw_client_values(node: Any, parent: str = "", path: str = "") -> list[str]:
    """Where a poison operator sits in a filter as an operator (not compared as a value): as a
    field's value, as a filter document, or at the top. Under ``$eq`` (or in an ``$in`` list)
    it is only compared, which is safe."""
    found: list[str] = []
    if isinstance(node, dict):
        is_poison = any(isinstance(v, str) and v.startswith("POISON-") for k, v in node.items()
                        if k.startswith("$"))
        if is_poison and parent not in ("$eq", "$in", "$nin", "$all"):
            found.append(f"{path or '(top)'} = {node}")
        for key, value in node.items():
            found += raw_client_values(value, key, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += raw_client_values(value, parent, f"{path}[{index}]")
    return found


def filters_of(command: dict[str, Any]) -> list[Any]:
    """The query parts of one profiled command (update documents and inserts left out)."""
    parts: list[Any] = []
    for key in ("filter", "query", "q"):
        if key in command:
            parts.append(command[key])
    for statement in command.get("updates", []) + command.get("deletes", []):
        parts.append(statement.get("q"))
    for stage in command.get("pipeline", []):
        if isinstance(stage, dict) and "$match" in stage:
            parts.append(stage["$match"])
    return parts


def test_filters_never_take_a_client_value_raw(own_root: tuple[Path, str], mongo_uri: str
                                              ) -> None:
    """Every query the engine sends (MongoDB's profiler records them all, from every process)
    compares a client's value with ``$eq`` or a checked type, never runs it as an operator."""
    root, database = own_root
    client: MongoClient[Any] = MongoClient(mongo_uri)
    db = client[database]
    db.create_collection("system.profile", capped=True, size=64 * 1024 * 1024)
    db.command("profile", 2)
    engine = make_engine(root, mongo_uri, database, local_system())
    try:
        with running(engine):
            ids = [engine.insert(poisoned(field)) for field in POISONED_FIELDS]
            ids.append(engine.insert({"state": "running", "command": ["true"],
                                      **{f.split(".")[0]: poison(f) for f in POISONED_FIELDS
                                         if f != "state"}}))
            victim = engine.submit("sleep", "3")
            engine.wait_for(lambda: (engine.store.get(victim) or {}).get("state") == "running",
                            WAIT, "a running job")
            for field in ("state", "cancel_requested", "native_id", "system", "engine_state"):
                engine.store.jobs.update_one({"_id": victim}, {"$set": {field: poison(field)}})
                time.sleep(0.3)
            # How these documents end is for the other tests: here, what the engine asked.
            with contextlib.suppress(AssertionError):
                wait_ended(engine, [*ids, victim], timeout=8)
            time.sleep(2)  # sweeps and status cycles
    finally:
        db.command("profile", 0)
    violations = []
    profiled = 0
    for entry in db["system.profile"].find({"ns": f"{database}.jobs"}):
        command = entry.get("command") or {}
        if "insert" in command or entry.get("op") == "insert":
            continue
        profiled += 1
        for part in filters_of(command):
            for where in raw_client_values(part):
                violations.append(f"{entry.get('appName')}: {entry.get('op')} {where}")
    client.close()
    assert profiled > 50, f"only {profiled} engine commands were profiled"
    assert not violations, (f"client values used raw in {len(violations)} filters:\n"
                            + "\n".join(sorted(set(violations))[:30]))


def _kill_mongods_of(data_dir: str) -> None:
    """SIGKILL a mongod this test's daemons left running (found by its data directory)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"mongod") and any(data_dir.encode() in a for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


