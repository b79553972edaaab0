"""The Python client of execd: submit jobs, follow them, cancel, hold and fetch their outputs.

For portals, pipelines and scripts, in the style of an executor API::

    from execution_engine import Client

    with Client() as client:                      # the configured (or embedded) database
        job = client.submit(["echo", "hello"], owner="alice@example.org")
        state = job.wait(timeout=600)             # "finished", "error", "killed" or None
        print(job.status.exit_code, job.outputs())

Everything goes through the job documents of the engine's database (docs/job-contract.md): the
client inserts a job, reads it, and writes only the documented requests (``cancel_requested``,
``hold_requested``). It never talks to the daemon, so it works from any host that reaches the
database. The ``execd`` client commands are built on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from bson import ObjectId
from pymongo.errors import OperationFailure, PyMongoError

from execution_engine.apps.outputs import FetchReport, fetch_outputs
from execution_engine.apps.registry import AppRegistry
from execution_engine.config import EngineConfig, load_config
from execution_engine.errors import ExecdError, NotRunning
from execution_engine.identity.claims import sign_claim
from execution_engine.job import Job as EngineJob
from execution_engine.jobdoc import job_id_text, job_project, new_job_document, request_problems
from execution_engine.resubmission import REQUEST
from execution_engine.states import ENDED_STATES
from execution_engine.store import JobStore, as_job_id, utcnow

ENDED = frozenset(s.value for s in ENDED_STATES)
"""The final states: ``finished``, ``error``, ``killed``."""

DEFAULT_DATABASE = "execd"
POLL_SLACK = timedelta(seconds=2)
"""How far back a poll of every job looks before its previous poll: clocks of the client and
the engine's hosts may differ a little, and a change written meanwhile must not be missed."""


class UnknownJob(ExecdError):
    """No job has this id."""


class JobNotEnded(ExecdError):
    """The job has not ended, and what was asked needs it ended (its outputs)."""


# ---------------------------------------------------------------------- finding the database
def database_uri(config: EngineConfig) -> str:
    """The MongoDB URI of ``config``'s engine: ``[mongodb] uri`` when configured, else the URI
    the running daemon's embedded mongod published in ``<state_dir>/mongodb.uri``.

    Raises NotRunning when neither is there (no URI configured and the daemon is not running).
    """
    if config.mongodb.uri:
        return config.mongodb.uri
    # Imported here: the daemon module brings the engine's process machinery with it.
    from execution_engine.daemon import running_pid

    try:
        uri = config.engine.mongodb_uri_file.read_text().strip()
    except OSError:
        uri = ""
    if not uri or running_pid(config.engine) is None:
        raise NotRunning(
            "execd is not running and no [mongodb] uri is configured: start it with "
            f"'execd start' (config: {config.describe_source()})"
        )
    return uri


# ---------------------------------------------------------------------- values
@dataclass(frozen=True)
class HistoryEntry:
    """One recorded state change of a job."""

    state: str | None
    at: datetime | None
    by: str | None
    message: str | None


@dataclass(frozen=True)
class JobStatus:
    """A job's status as read at one moment (``Job.status`` reads a fresh one)."""

    job_id: Any
    state: str | None
    """The state name (docs/job-contract.md); None if the document has none."""
    message: str | None
    """``status_message``: why the job is in its state."""
    reason: str | None
    """Why an ended job ended (``completed``, ``nonzero_exit``, ``cancelled``...), when the
    engine recorded one."""
    exit_code: int | None
    history: tuple[HistoryEntry, ...]
    """Every recorded change, oldest first (the last 100 are kept)."""
    cancel_requested: bool
    hold_requested: bool | None
    """The client's last hold (True) or release (False) request; None if never asked."""
    held: bool | None = None
    """Whether the engine has held the job on its execution system (its ``hold.held``);
    None before it acted on a request."""
    hold_error: str | None = None
    """Why the execution system could not hold or release the job (``hold.error``)."""
    attempt: int = 1
    """Which run of the job this is (a resubmission is a new attempt)."""
    usage: Mapping[str, Any] | None = None
    """What the ended job used, where its system can tell (``wall_s``, ``cpu_s``,
    ``max_rss_mb``, ``signal``, ``node``)."""

    @property
    def ended(self) -> bool:
        """True once the job is in a final state (it never changes again)."""
        return self.state in ENDED

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> JobStatus:
        history = doc.get("history")
        entries = tuple(
            HistoryEntry(e.get("state"), e.get("at"), e.get("by"), e.get("message"))
            for e in (history if isinstance(history, list) else []) if isinstance(e, Mapping))
        hold = doc.get("hold_requested")
        record = doc.get("hold")
        done: Mapping[str, Any] = record if isinstance(record, Mapping) else {}
        exit_code = doc.get("exit_code")
        return cls(doc.get("_id"), _text(doc.get("state")), _text(doc.get("status_message")),
                   _text(doc.get("reason")),
                   exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool)
                   else None,
                   entries, doc.get("cancel_requested") is True,
                   hold if isinstance(hold, bool) else None,
                   done.get("held") if isinstance(done.get("held"), bool) else None,
                   _text(done.get("error")), EngineJob(doc).attempt,
                   doc["usage"] if isinstance(doc.get("usage"), Mapping) else None)


@dataclass(frozen=True)
class Output:
    """One output file listed on an ended job, relative to its job directory."""

    path: str
    size: int | None
    sha256: str | None
    """An application job's outputs carry their checksum; a command job's do not."""
    fetched_at: datetime | None


@dataclass(frozen=True)
class StateChange:
    """A job entered ``state`` (what :meth:`Client.watch` yields)."""

    job_id: Any
    state: str | None
    message: str | None
    at: datetime | None
    """When the change was written (the server's time), when known."""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _listed_outputs(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The outputs listed on a job document, less those the engine marked truncated."""
    listed = doc.get("outputs")
    return [o for o in (listed if isinstance(listed, list) else [])
            if isinstance(o, Mapping) and isinstance(o.get("path"), str)
            and not o.get("truncated")]


# ---------------------------------------------------------------------- a job
class Job:
    """One job of a :class:`Client`'s database. Made by :meth:`Client.submit`,
    :meth:`Client.job` and :meth:`Client.jobs`; cheap to make, every property that says it
    reads goes to the database."""

    def __init__(self, client: Client, document: Mapping[str, Any]) -> None:
        self.client = client
        self.id: Any = document["_id"]
        self.document: dict[str, Any] = dict(document)
        """The job document as last read (no I/O); :meth:`refresh` reads it again."""

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self.document.get('state')!r})"

    def refresh(self) -> dict[str, Any]:
        """Read the job document again (and keep it in :attr:`document`); raises UnknownJob
        when the job is gone."""
        doc = self.client.store.get(self.id)
        if doc is None:
            raise UnknownJob(f"no job {self.id}")
        self.document = doc
        return doc

    @property
    def status(self) -> JobStatus:
        """The job's current status (reads the document)."""
        return JobStatus.from_document(self.refresh())

    def wait(self, timeout: float | None = None, *, poll_interval: float = 1.0) -> str | None:
        """Block until the job ends; its final state, or None if ``timeout`` seconds passed
        first (``None``: no limit). Follows the job as :meth:`Client.watch` does; afterwards
        :attr:`document` holds the job as it ended."""
        for change in self.client.watch([self.id], timeout=timeout,
                                        poll_interval=poll_interval):
            if change.ended:
                self.refresh()
                return change.state
        return None

    def cancel(self) -> JobStatus:
        """Ask the engine to cancel the job wherever it is (``cancel_requested``); the status
        right after asking. A job not submitted yet ends ``killed`` at once; one on an execution
        system is killed there; an ended job is left as it is."""
        return self._request(self.client.store.request_cancel(self.id))

    def hold(self) -> JobStatus:
        """Ask the engine to hold the job on its execution system (``hold_requested: true``);
        the status right after asking. Once the job is on its system, the engine holds it
        there (``JobStatus.held``; the state shows ``hold`` when the system reports it) until
        :meth:`release`; a system that cannot hold leaves the job as it is and says why
        (``JobStatus.hold_error``)."""
        return self._request(self.client.store.request_hold(self.id, True))

    def release(self) -> JobStatus:
        """Ask the engine to release a held job (``hold_requested: false``); the status right
        after asking."""
        return self._request(self.client.store.request_hold(self.id, False))

    def resubmit(self, requirements: Mapping[str, Any] | None = None) -> JobStatus:
        """Ask the engine to run the ended job again as a new attempt (``resubmit_requested``),
        with ``requirements`` changed when given (e.g. ``{"walltime_s": 7200}``); the status
        right after asking. The earlier attempt's record stays in the job's ``attempts`` and
        its files in ``<job dir>.attempt-<n>``.

        Raises ValueError for requirements the job contract refuses, JobNotEnded when the job
        has not ended (only an ended job runs again), UnknownJob when there is no such job."""
        request: Any = True if requirements is None else {"requirements": dict(requirements)}
        problems = request_problems(REQUEST, request)
        if problems:
            raise ValueError("; ".join(problems))
        doc = self.client.store.request_resubmit(self.id, request)
        if doc is None:
            state = self.refresh().get("state")
            raise JobNotEnded(f"job {self.id} is {state!r}: only an ended job runs again")
        return self._request(doc)

    def _request(self, doc: dict[str, Any] | None) -> JobStatus:
        if doc is None:
            raise UnknownJob(f"no job {self.id}")
        self.document = doc
        return JobStatus.from_document(doc)

    def outputs(self) -> list[Output]:
        """The output files the engine listed when the job ended (reads the document; empty
        before the end). Entries the engine marked truncated are left out."""
        return [Output(o["path"], o.get("size"), o.get("sha256"), o.get("fetched_at"))
                for o in _listed_outputs(self.refresh())]

    def fetch(self, dest: str | os.PathLike[str], *, mark: bool = False) -> FetchReport:
        """Copy the job's listed outputs into the folder ``dest`` (made if missing), each
        verified (size, and checksum when listed) before it is renamed into place; returns the
        ``FetchReport`` (``fetched``, ``present``, ``problems``). With ``mark=True``, once all
        are there, records them fetched on the job (``outputs.fetched_at``,
        ``outputs_fetched_at``). Raises JobNotEnded before the job ends. Needs the job
        directory to be readable from this host."""
        doc = self.refresh()
        if doc.get("state") not in ENDED:
            raise JobNotEnded(f"job {self.id} has not ended ({doc.get('state')}): its outputs "
                              "are listed when it ends")
        outputs = _listed_outputs(doc)
        if not outputs:
            return FetchReport()
        if not isinstance(doc.get("job_dir"), str):
            raise ExecdError(f"job {self.id} has no job directory")
        report = fetch_outputs(Path(doc["job_dir"]), outputs, Path(dest))
        if mark and not report.problems:
            self.client.store.mark_outputs_fetched(self.id, doc["state"], report.fetched)
        return report


# ---------------------------------------------------------------------- the client
class Client:
    """A connection to one engine's database.

    ``uri``: a MongoDB URI. Without it, the URI of ``config`` (an :class:`EngineConfig`, a path
    to ``execd.ini``, or None for ``$EXECD_CONFIG``, else ``/etc/execd/execd.ini``, else the
    built-in defaults): its ``[mongodb] uri``, else the URI the running daemon's embedded
    mongod published in ``<state_dir>/mongodb.uri`` (raises NotRunning when there is none).
    ``database``: default the configuration's ``[mongodb] database``, else ``execd``.
    ``claim_as``: ``(client name, secret)`` of a client of the daemon's ``[identity]
    [[clients]]`` (the secret as :func:`~execution_engine.identity.read_secret_file` reads
    it): every job :meth:`submit` inserts then carries that client's owner claim.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, uri: str | None = None, *,
                 config: EngineConfig | str | os.PathLike[str] | None = None,
                 database: str | None = None, timeout: float | None = None,
                 app_name: str = "execd-client",
                 claim_as: tuple[str, bytes] | None = None) -> None:
        settings: EngineConfig | None = None
        if uri is None or config is not None:
            settings = config if isinstance(config, EngineConfig) else load_config(config)
        if uri is None:
            assert settings is not None
            uri = database_uri(settings)
        if database is None:
            database = settings.mongodb.database if settings is not None else DEFAULT_DATABASE
        if timeout is None:
            timeout = settings.mongodb.server_selection_timeout if settings is not None else 10.0
        self.uri = uri
        self.database = database
        self.claim_as = claim_as
        """``(client name, secret)`` that signs the jobs :meth:`submit` inserts; None: unsigned."""
        self.store = JobStore.open(uri, database, timeout=timeout, app_name=app_name)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ jobs
    def submit(
        self,
        command: Sequence[str] | None = None,
        *,
        app: str | None = None,
        app_version: int | None = None,
        inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        splitter: Mapping[str, Any] | None = None,
        name: str | None = None,
        owner: str | None = None,
        project: str | None = None,
        environment: Mapping[str, str] | None = None,
        requirements: Mapping[str, Any] | None = None,
        notify: bool | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Job:
        """Insert a new job; the :class:`Job` (state ``to be built``).

        Either ``command`` (the program and its arguments, never passed through a shell) or
        ``app`` (a stored application's name, ``app_version`` default: the latest when the job
        is built) with its ``inputs``: a mapping ``{name: value}`` (a :class:`pathlib.Path`
        value is a file input, copied into the job directory) or the documented list of
        ``{name, value}`` / ``{name, path, action}``. ``splitter`` splits an application job
        (docs/applications.md). Raises ValueError when both or neither of ``command`` and
        ``app`` are given, and UnknownApp when ``app`` is not stored (or its stored definition
        is invalid). Fields the client leaves out get the engine's defaults. A client made
        with ``claim_as`` gives the job an ObjectId ``_id`` and signs it (``client``,
        ``claim``); it then needs ``owner`` (ValueError without one).
        """
        if (command is None) == (app is None):
            raise ValueError("give either a command or an app, not both and not neither")
        if command is not None and (isinstance(command, str) or not command):
            raise ValueError("command is a non-empty list of strings: the program and its "
                             "arguments")
        app_field: dict[str, Any] | None = None
        if app is not None:
            AppRegistry(self.store.db).get(app, app_version)  # refused now, not at build time
            app_field = {"name": app, **({} if app_version is None else {"version": app_version})}
        elif inputs is not None or splitter is not None:
            raise ValueError("inputs and splitter are for application jobs only")
        doc = new_job_document(list(command) if command is not None else None, app=app_field,
                               name=name, owner=owner, project=project,
                               environment=environment, requirements=requirements,
                               notify=notify)
        if inputs is not None:
            doc["inputs"] = job_inputs(inputs)
        if splitter is not None:
            doc["splitter"] = dict(splitter)
        if metadata is not None:
            doc["metadata"] = dict(metadata)
        if self.claim_as is not None:
            self._sign(doc)
        doc["_id"] = self.store.insert(doc)
        return Job(self, doc)

    def _sign(self, doc: dict[str, Any]) -> None:
        """Give ``doc`` an id of its own and this client's claim of its owner and project."""
        assert self.claim_as is not None
        name, secret = self.claim_as
        owner = doc.get("owner")
        if not isinstance(owner, str) or not owner:
            raise ValueError("a signed job needs an owner (the claim is of its owner)")
        doc.setdefault("_id", ObjectId())
        doc["client"] = name
        doc["claim"] = sign_claim(secret, job_id_text(doc["_id"]), owner, job_project(doc))

    def job(self, job_id: Any) -> Job:
        """The job ``job_id`` (an ObjectId, its hex text, or a client-chosen string id);
        raises UnknownJob when there is none."""
        doc = self.store.get(job_id)
        if doc is None:
            raise UnknownJob(f"no job {job_id}")
        return Job(self, doc)

    def jobs(self, *, owner: str | None = None, state: str | None = None,
             project: str | None = None, parent: Any = None, subjobs: bool = True,
             limit: int = 50) -> list[Job]:
        """Jobs matching every given field, newest first, at most ``limit`` (0: no limit).
        ``parent``: the subjobs of that split job (raises UnknownJob if there is no such job);
        ``subjobs=False`` leaves subjobs out (their split jobs are listed). Each Job's
        :attr:`Job.document` holds the job without its ``history`` and ``outputs``."""
        parent_id = self.job(parent).id if parent is not None else None
        return [Job(self, doc) for doc in self.store.find_jobs(
            owner=owner, state=state, project=project, parent=parent_id, subjobs=subjobs,
            limit=limit)]

    # ------------------------------------------------------------------ following jobs
    def watch(self, job_ids: Sequence[Any] | None = None, *, timeout: float | None = None,
              poll_interval: float = 1.0, change_stream: bool = True) -> Iterator[StateChange]:
        """Yield the state changes of the jobs ``job_ids`` (of every job when None) until
        ``timeout`` seconds have passed (None: for ever; stop iterating to stop earlier).

        For named jobs, the current state of each comes first, so that a change made just
        before the call is not missed (a job that does not exist yields nothing). Changes come
        from a change stream on the jobs collection; where change streams are not available
        (a standalone mongod), or with ``change_stream=False``, the jobs are polled every
        ``poll_interval`` seconds instead: a poll yields a job's state when it differs from the
        last one yielded, so a state held for less than one interval may be skipped, and a
        job inserted by a client shows up once the engine first changes it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = None if job_ids is None else [as_job_id(j) for j in job_ids]
        stream = None
        if change_stream:
            try:
                stream = self.store.watch_job_states(
                    ids, max_await_seconds=max(0.05, min(poll_interval, 1.0)))
            except OperationFailure:
                stream = None  # no change streams here (a standalone mongod): poll
        last: dict[Any, str | None] = {}
        try:
            if ids is not None:
                # Read after the stream is open: a change in between is in both, never in none.
                found = {doc["_id"]: doc for doc in self.store.job_states(ids)}
                for job_id in ids:
                    if job_id in found:
                        change = _change_of_state(found[job_id])
                        last[job_id] = change.state
                        yield change
            if stream is not None:
                try:
                    yield from _changes_of_stream(stream, deadline)
                    return
                except PyMongoError:
                    pass  # the stream broke (a failover, an invalidation): poll from here on
            yield from self._poll(ids, deadline, poll_interval, last)
        finally:
            if stream is not None:
                stream.close()

    def _poll(self, ids: list[Any] | None, deadline: float | None, interval: float,
              last: dict[Any, str | None]) -> Iterator[StateChange]:
        since = utcnow() - POLL_SLACK
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            time.sleep(interval if remaining is None else min(interval, remaining))
            now = utcnow()
            docs = self.store.job_states(ids, updated_since=None if ids is not None else since)
            since = now - POLL_SLACK
            seen: dict[Any, str | None] = {}
            for doc in docs:
                change = _change_of_state(doc)
                seen[doc["_id"]] = change.state
                if last.get(doc["_id"], _NEVER) != change.state:
                    yield change
            # Every job: remember only this poll's jobs (the next poll looks back as far).
            last = {**last, **seen} if ids is not None else seen


_NEVER = object()


def _change_of_state(doc: Mapping[str, Any]) -> StateChange:
    return StateChange(doc["_id"], _text(doc.get("state")), _text(doc.get("status_message")),
                       doc.get("updated_at"))


def _changes_of_stream(stream: Any, deadline: float | None) -> Iterator[StateChange]:
    while deadline is None or time.monotonic() < deadline:
        event = stream.try_next()  # waits at most the stream's max_await_time
        if event is None:
            continue
        if event.get("operationType") == "update":
            fields = event.get("updateDescription", {}).get("updatedFields", {})
        else:
            fields = event.get("fullDocument") or {}
        cluster_time = event.get("clusterTime")
        yield StateChange(event["documentKey"]["_id"], _text(fields.get("state")),
                          _text(fields.get("status_message")),
                          cluster_time.as_datetime() if cluster_time is not None else None)


def job_inputs(inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]]
               ) -> list[dict[str, Any]]:
    """An application job's ``inputs`` field from a mapping ``{name: value}`` (a Path value is
    a file input, copied) or the documented list (taken as it is)."""
    if not isinstance(inputs, Mapping):
        return [dict(item) for item in inputs]
    out: list[dict[str, Any]] = []
    for name, value in inputs.items():
        if isinstance(value, Path):
            out.append({"name": name, "type": "file", "path": str(value.absolute()),
                        "action": "COPY"})
        else:
            out.append({"name": name, "value": value})
    return out


__all__ = [
    "ENDED",
    "Client",
    "HistoryEntry",
    "Job",
    "JobNotEnded",
    "JobStatus",
    "Output",
    "StateChange",
    "UnknownJob",
    "database_uri",
    "job_inputs",
]
