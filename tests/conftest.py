"""Fixtures: a real mongod, a real execd daemon, a real SMTP server.

* ``mongod`` (session): a single-node replica set on a free port with a temporary data directory,
  started with the engine's own :class:`EmbeddedMongo`; ``mongo_uri`` is its URI.
* ``database``: a fresh database name per test, dropped afterwards.
* ``smtp``: an aiosmtpd server on a free port collecting messages.
* ``engine``: a running daemon (``execd run`` in a subprocess, as systemd would run it) on the
  test's database, with a config the test can extend; stopped at the end, and the test fails if any
  of its processes is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from execution_engine.mongod import REPLICA_SET, EmbeddedMongo, free_port
from execution_engine.proc import is_running as _alive
from execution_engine.proc import process_tree as all_processes
from execution_engine.store import JobStore
from tests.support.accounts import LocalAccounts, local_accounts_session

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- MongoDB
@pytest.fixture(scope="session")
def mongod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMongo]:
    server = EmbeddedMongo(tmp_path_factory.mktemp("mongod"), free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongod: EmbeddedMongo) -> str:
    return mongod.uri


class SecureMongo(EmbeddedMongo):
    """A mongod with access control: ``--auth`` and a keyFile (which a replica set needs for
    authentication between members), a single-node replica set like :class:`EmbeddedMongo`.

    The replica set is initiated and the first user (``admin``, role ``root``) created through
    the localhost exception, as a site would do it; :attr:`admin_uri` logs in as that user,
    :attr:`uri` carries no credentials."""

    ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex

    @property
    def admin_uri(self) -> str:
        return (f"mongodb://admin:{self.ADMIN_PASSWORD}@127.0.0.1:{self.port}/"
                f"?replicaSet={REPLICA_SET}&authSource=admin")

    def start(self, timeout: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir.parent / f"{self.data_dir.name}.key"
        key_file.write_text(uuid.uuid4().hex * 2)
        key_file.chmod(0o400)  # mongod refuses a keyFile readable by others
        self.process = subprocess.Popen(
            [self.binary, "--dbpath", str(self.data_dir), "--port", str(self.port),
             "--bind_ip", "127.0.0.1", "--replSet", REPLICA_SET, "--auth",
             "--keyFile", str(key_file), "--quiet", "--logpath", str(self.log_file),
             "--setParameter", "diagnosticDataCollectionEnabled=false"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        local: MongoClient[Any] = MongoClient("127.0.0.1", self.port, directConnection=True,
                                              serverSelectionTimeoutMS=500)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.process.poll() is None, f"mongod --auth exited: {self.log_file}"
                try:  # hello needs no login; replSetInitiate passes the localhost exception
                    hello = local.admin.command("hello")
                    if hello.get("isWritablePrimary"):
                        break
                    if "setName" not in hello:
                        local.admin.command("replSetInitiate", {
                            "_id": REPLICA_SET,
                            "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]})
                except OperationFailure as exc:
                    if exc.code != 23:  # AlreadyInitialized: wait for it to be primary
                        raise
                except PyMongoError:
                    pass  # not listening yet
                assert time.monotonic() < deadline, f"mongod --auth not primary: {self.log_file}"
                time.sleep(0.1)
            local.admin.command("createUser", "admin", pwd=self.ADMIN_PASSWORD,
                                roles=[{"role": "root", "db": "admin"}])
        finally:
            local.close()
        return self.uri


@pytest.fixture(scope="session")
def secure_mongod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMongo]:
    """A mongod started with ``--auth`` and a keyFile; log in with its ``admin_uri``."""
    server = SecureMongo(tmp_path_factory.mktemp("secure-mongod") / "data", free_port())
    server.start()
    yield server
    server.stop()


@contextlib.contextmanager
def scratch_database(mongo_uri: str) -> Iterator[str]:
    """The name of a database of its own, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        client: MongoClient[Any] = MongoClient(mongo_uri)
        client.drop_database(name)
        client.close()


@pytest.fixture
def database(mongo_uri: str) -> Iterator[str]:
    with scratch_database(mongo_uri) as name:
        yield name


@pytest.fixture
def store(mongo_uri: str, database: str) -> Iterator[JobStore]:
    job_store = JobStore.open(mongo_uri, database)
    job_store.ensure_indexes()
    yield job_store
    job_store.close()


# ---------------------------------------------------------------------- SMTP
class Inbox:
    """Collects every message the SMTP server receives."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        message = message_from_bytes(envelope.content)
        message["X-Rcpt"] = ",".join(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 OK"


@dataclass
class SmtpServer:
    host: str
    port: int
    inbox: Inbox

    @property
    def messages(self) -> list[Any]:
        return self.inbox.messages


@contextlib.contextmanager
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free local port, keeping what it receives."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, inbox)
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


# ---------------------------------------------------------------------- the daemon
def execd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "execution_engine", *args]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (zombies are dead and not counted)."""
    return [p for p in all_processes(pid) if _alive(p)]


def _titled_tree(pid: int, parent_title: str = "") -> Iterator[tuple[int, str]]:
    """``pid`` and its live descendants, each with its parent's title."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return
    title = process_title(pid)
    if _alive(pid):
        yield pid, parent_title
    for child in children:
        yield from _titled_tree(int(child), title)


def process_title(pid: int) -> str:
    """The first word of ``pid``'s command line ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def is_engine_process(pid: int) -> bool:
    """Whether ``pid`` is (still) an engine process: pids are reused, so a pid recorded earlier
    is checked before it is signalled."""
    return process_title(pid).startswith("execd: ")


@dataclass
class Engine:
    """A daemon under test and what the test needs to talk to it."""

    config_path: Path
    state_dir: Path
    mongo_uri: str
    database: str
    process: subprocess.Popen[bytes] | None = None
    store: JobStore = field(init=False)
    pids_seen: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.store = JobStore.open(self.mongo_uri, self.database)

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "execd.log"

    def cli(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(execd_command("-c", str(self.config_path), *args),
                                capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"execd {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def start(self) -> None:
        """Start ``execd run`` and wait until the monitor is up."""
        assert self.process is None or self.process.poll() is not None
        self.process = subprocess.Popen(
            execd_command("-c", str(self.config_path), "run"),
            stdout=subprocess.DEVNULL, stderr=open(self.state_dir / "run.err", "ab"),  # noqa: SIM115
            cwd=ROOT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        status = self.state_dir / "run" / "status.json"
        while not status.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"execd run exited {self.process.returncode}:\n"
                                     + (self.state_dir / "run.err").read_text()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError("execd did not start in 60s")
            time.sleep(0.05)
        kinds = {f"{k}-actor" for k in ("building", "submit", "status", "notification")}
        while not kinds <= set(self.actor_pids()):
            if time.monotonic() > deadline:
                raise AssertionError(f"actors not all up in 60s: {self.actor_pids()}")
            time.sleep(0.05)

    def actor_pids(self, kind: str | None = None) -> dict[str, list[int]]:
        """Live engine processes by title (``execd: submit-actor`` -> ``submit-actor``)."""
        assert self.process is not None
        found: dict[str, list[int]] = {}
        for pid, parent_title in _titled_tree(self.process.pid):
            title = process_title(pid)
            # A process titled as its parent is the parent's fork on its way to exec (a Local
            # job being started), not an engine process of its own.
            if title.startswith("execd: ") and title != parent_title:
                name = title.removeprefix("execd: ").strip()
                found.setdefault(name, []).append(pid)
        self.pids_seen.update(p for pids in found.values() for p in pids)
        return {k: v for k, v in found.items() if kind is None or k == kind}

    def stop(self, timeout: float = 90) -> None:
        """Warm stop (SIGTERM) and check that no engine process is left."""
        if self.process is None or self.process.poll() is not None:
            return
        self.actor_pids()  # records every engine process (not the Local jobs, which stay)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(is_engine_process(p) for p in self.pids_seen):
            time.sleep(0.1)
        left = [p for p in self.pids_seen if is_engine_process(p)]
        assert not left, f"processes left behind after stop: {left}"

    def kill_all(self) -> None:
        """SIGKILL every engine process at once (a crash); Local jobs are not the engine."""
        assert self.process is not None
        engine_pids = [p for pids in self.actor_pids().values() for p in pids]
        for pid in [self.process.pid, *engine_pids]:
            with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
                os.kill(pid, signal.SIGKILL)
        self.process.wait(30)

    def insert(self, doc: dict[str, Any]) -> Any:
        return self.store.insert(doc)

    def submit(self, *command: str, **fields: Any) -> Any:
        return self.insert({"state": "to be built", "command": list(command), **fields})

    def wait_ended(self, job_ids: list[Any], timeout: float = 60) -> list[dict[str, Any]]:
        """The job documents once every one has ended (and been notified if it is due)."""
        deadline = time.monotonic() + timeout
        ended = ["finished", "error", "killed"]
        while True:
            docs = list(self.store.jobs.find({"_id": {"$in": job_ids}}))
            done = [d for d in docs if d.get("state") in ended]
            if len(done) == len(job_ids):
                return sorted(docs, key=lambda d: job_ids.index(d["_id"]))
            if time.monotonic() > deadline:
                states: dict[str, int] = {}
                for d in docs:
                    states[str(d.get("state"))] = states.get(str(d.get("state")), 0) + 1
                raise AssertionError(f"jobs not ended after {timeout}s: {states}\n"
                                     + self.log_file.read_text()[-4000:])
            time.sleep(0.05)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                     + self.log_file.read_text()[-4000:])
            time.sleep(0.05)

    def close(self) -> None:
        self.store.close()


def write_config(path: Path, state_dir: Path, mongo_uri: str, database: str, extra: str = "",
                 *, jobs_dir: Path | None = None) -> None:
    path.write_text(textwrap.dedent(f"""\
        [engine]
        state_dir = {state_dir}
        jobs_dir = {jobs_dir or ""}
        log_level = DEBUG

        [mongodb]
        uri = {mongo_uri}
        database = {database}

        [monitor]
        poll_interval = 0.5
        lease_seconds = 5
        recovery_interval = 0.5
        restart_backoff = 0.2
        """) + textwrap.dedent(extra))


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process the engine never started, in a process group of its own: kills must never
    reach it."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def engine_factory(tmp_path: Path, mongo_uri: str, database: str
                   ) -> Iterator[Callable[..., Engine]]:
    """Make (not start) engines: ``engine_factory(extra_config_text)``; ``jobs_dir`` (default:
    ``jobs`` in the state directory) for jobs whose accounts must reach it."""
    made: list[Engine] = []

    def make(extra: str = "", *, start: bool = True, jobs_dir: Path | None = None) -> Engine:
        state_dir = tmp_path / f"state{len(made)}"
        state_dir.mkdir()
        config = tmp_path / f"execd{len(made)}.ini"
        write_config(config, state_dir, mongo_uri, database, extra, jobs_dir=jobs_dir)
        engine = Engine(config, state_dir, mongo_uri, database)
        made.append(engine)
        if start:
            engine.start()
        return engine

    yield make
    for engine in made:
        try:
            engine.stop()
        finally:
            engine.close()


@pytest.fixture
def engine(engine_factory: Callable[..., Engine]) -> Engine:
    """A running daemon with the default Local system (4 slots)."""
    return engine_factory("[systems]\n[[local]]\nclass = local\nslots = 4\nkill_grace = 2\n")


# ---------------------------------------------------------------------- local accounts
@pytest.fixture(scope="session")
def local_accounts() -> Iterator[LocalAccounts]:
    """Real local accounts and groups of this session (``useradd``; root only: skipped without
    it, failed under ``CI=true``), removed at the end: see :mod:`tests.support.accounts`."""
    yield from local_accounts_session()


@pytest.fixture
def open_jobs_dir() -> Iterator[Path]:
    """A jobs directory below folders every account may traverse (pytest's own are root's
    alone), for jobs that run as other accounts."""
    path = Path(tempfile.mkdtemp(prefix="execd-identity-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path / "jobs"
    shutil.rmtree(path, ignore_errors=True)
