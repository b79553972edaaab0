"""The benchmark's measurements against a running :class:`~benchmarks.env.BenchEngine`.

* :func:`engine_throughput`: N trivial jobs in one ``insert_many``; from just before the insert
  to the last ``notification.sent_at`` (every job ended and notified).
* :func:`idle_latency`: single jobs one after another on an idle engine. The job's command is
  ``date +%s%N``: it prints the moment the job's process started (into ``job.stdout``), so
  *insert -> started* needs no clock but the host's. *exit -> finished* runs from the job's exit
  (the later of that moment and the exit-code file's mtime) to ``ended_at``.
* :func:`preload`: the scale test's backlog, written before the daemon starts.

Waiting loops look at this run's jobs through an ``_id`` range (every id made here after
``first_id`` is greater), never a collection scan, so that they do not load a big database.
"""

from __future__ import annotations

import argparse
import random
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection

from benchmarks.env import BenchEngine, cpu_seconds, rss_kb
from execution_engine.states import ALL_STATE_VALUES
from sim.report import ENDED, NOTIFIED, latencies, summarize

POLL = 0.25
"""Seconds between two counts while waiting: the end time is read from the documents afterwards,
so polling only has to be light."""


@dataclass
class ThroughputResult:
    jobs: int
    insert_s: float
    ended_s: float
    notified_s: float
    states: dict[str, int]
    steps: dict[str, dict[str, float | int] | None]
    rss_start: dict[str, int] = field(default_factory=dict)
    rss_end: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    """CPU seconds used during the run by each engine process (and mongod): own, and the
    children's it reaped (the jobs, for the Submit actor)."""
    mongod_ops: dict[str, int] = field(default_factory=dict)
    """What mongod did during the run (``serverStatus`` counters: operations, documents
    written and returned, index keys and documents examined), the benchmark's own included."""

    @property
    def rate(self) -> float:
        return self.jobs / self.notified_s


@dataclass
class LatencyResult:
    jobs: int
    insert_to_started_ms: list[float]
    exit_to_finished_ms: list[float]
    insert_to_notified_ms: list[float]
    states: dict[str, int]
    steps_ms: dict[str, list[float]] = field(default_factory=dict)
    """The way to the start: insert -> built_at -> submitted_at -> the job's first moment."""


#: The throughput benchmarks' job. ``true`` is built into ``sh``: a script that runs its command
#: in the foreground runs no process for it at all, one that starts it in the background (as the
#: job script does since the second stage, to pass a kill on exactly) forks one. ``--command
#: /bin/true`` measures a job that runs a program, as every real job does.
TRIVIAL_COMMAND = ["true"]


def add_command_option(parser: argparse.ArgumentParser) -> None:
    """``--command``: the throughput jobs' command line (split as a shell would)."""
    parser.add_argument("--command", type=shlex.split, default=TRIVIAL_COMMAND,
                        help="the throughput jobs' command (default 'true', built into sh; "
                             "'/bin/true' runs a program)")


def trivial_job(tag: str, command: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    argv = list(command or TRIVIAL_COMMAND)
    return {"_id": ObjectId(), "state": "to be built", "command": argv, "name": argv[0],
            "metadata": {"bench": tag, **extra}}


def wait_done(jobs: Collection[Any], first_id: ObjectId, tag: str, count: int,
              timeout: float) -> None:
    """Wait until ``count`` jobs tagged ``tag`` (made after ``first_id``) ended and were
    notified. While some have not ended, each poll reads one key of the engine's ``(state,
    _id)`` index (a covered query stopping at the first job not ended), so that the waiting
    costs mongod next to nothing: the measurement is of the engine, not of its observer."""
    deadline = time.monotonic() + timeout
    not_ended = {"_id": {"$gte": first_id},
                 "state": {"$in": [s for s in ALL_STATE_VALUES if s not in ENDED]}}
    ours = {"_id": {"$gte": first_id}, "metadata.bench": tag}
    while True:
        if (jobs.find_one(not_ended, {"_id": 1}) is None
                and jobs.find_one({**ours, "notification.state": {"$nin": list(NOTIFIED)}},
                                  {"_id": 1}) is None
                and jobs.count_documents(ours) >= count):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tag}: jobs not all ended and notified after {timeout:.0f}s")
        time.sleep(POLL)


def warm_up(jobs: Collection[Any], count: int = 20) -> None:
    """A few jobs first, so that first-time costs (imports, connections) are not measured."""
    tag = f"warm-{ObjectId()}"
    first = ObjectId()
    jobs.insert_many([trivial_job(tag) for _ in range(count)])
    wait_done(jobs, first, tag, count, timeout=120)


def engine_throughput(engine: BenchEngine, jobs: Collection[Any], count: int,
                      timeout: float, mongod_pid: int | None = None, *,
                      command: list[str] | None = None) -> ThroughputResult:
    tag = f"tp-{ObjectId()}"
    rss_start = _rss(engine, mongod_pid)
    cpu_start = _cpu(engine, mongod_pid)
    ops_start = server_counters(jobs)
    first = ObjectId()
    began = datetime.now(UTC)
    docs = [trivial_job(tag, command, inserted_at=began) for _ in range(count)]
    t0 = time.time()
    jobs.insert_many(docs, ordered=False)
    insert_s = time.time() - t0
    wait_done(jobs, first, tag, count, timeout)
    cpu_end = _cpu(engine, mongod_pid)
    ops = {k: v - ops_start.get(k, 0) for k, v in server_counters(jobs).items()}
    found = list(jobs.find({"_id": {"$gte": first}, "metadata.bench": tag},
                           {"state": 1, "built_at": 1, "submitted_at": 1, "started_at": 1,
                            "ended_at": 1, "notification": 1, "metadata": 1}))
    ended = max(d["ended_at"] for d in found).timestamp()
    notified = max(d["notification"].get("sent_at") or d["ended_at"] for d in found).timestamp()
    states: dict[str, int] = {}
    for d in found:
        states[d["state"]] = states.get(d["state"], 0) + 1
    steps = {}
    for step, values in latencies(found).items():
        summary = summarize(values)
        steps[step] = summary.as_dict() if summary else None
    cpu = {name: (round(end[0] - cpu_start[name][0], 2), round(end[1] - cpu_start[name][1], 2))
           for name, end in cpu_end.items() if name in cpu_start}
    return ThroughputResult(count, insert_s, ended - t0, notified - t0, states, steps,
                            rss_start, _rss(engine, mongod_pid), cpu, ops)


def server_counters(jobs: Collection[Any]) -> dict[str, int]:
    """mongod's cumulative operation and document counters."""
    status = jobs.database.client.admin.command("serverStatus")
    metrics = status.get("metrics", {})
    found = {f"op.{k}": int(v) for k, v in status.get("opcounters", {}).items()}
    found.update({f"documents.{k}": int(v)
                  for k, v in metrics.get("document", {}).items()})
    executor = metrics.get("queryExecutor", {})
    found["examined.keys"] = int(executor.get("scanned", 0))
    found["examined.documents"] = int(executor.get("scannedObjects", 0))
    return found


def _rss(engine: BenchEngine, mongod_pid: int | None) -> dict[str, int]:
    found = engine.rss()
    if mongod_pid is not None and (kb := rss_kb(mongod_pid)) is not None:
        found["mongod"] = kb
    return found


def _cpu(engine: BenchEngine, mongod_pid: int | None) -> dict[str, tuple[float, float]]:
    found = engine.cpu()
    if mongod_pid is not None and (mongod := cpu_seconds(mongod_pid)) is not None:
        found["mongod"] = mongod
    return found


def idle_latency(jobs: Collection[Any], count: int, *, pause: float = 0.05,
                 timeout: float = 60.0) -> LatencyResult:
    """``count`` single ``date +%s%N`` jobs, each inserted once the previous one is done."""
    tag = f"lat-{ObjectId()}"
    started_ms, finished_ms, notified_ms = [], [], []
    steps: dict[str, list[float]] = {"insert -> built": [], "built -> spawned": [],
                                     "spawned -> started": []}
    states: dict[str, int] = {}
    for _ in range(count):
        doc = trivial_job(tag, ["date", "+%s%N"])
        inserted_ns = time.time_ns()
        jobs.insert_one(doc)
        deadline = time.monotonic() + timeout
        while True:
            found = jobs.find_one({"_id": doc["_id"]})
            if found and (found.get("notification") or {}).get("state") in NOTIFIED:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"latency job {doc['_id']} not done after {timeout:.0f}s")
            time.sleep(0.002)
        states[found["state"]] = states.get(found["state"], 0) + 1
        job_dir = Path(found["job_dir"])
        try:
            start_ns = int((job_dir / "job.stdout").read_text().strip())
            exit_ns = max(start_ns, (job_dir / ".execd" / "exit_code").stat().st_mtime_ns)
        except (OSError, ValueError):
            continue  # the job did not run: counted in states, not in latencies
        ended_ns = int(found["ended_at"].timestamp() * 1e9)
        sent = (found.get("notification") or {}).get("sent_at") or found["ended_at"]
        started_ms.append((start_ns - inserted_ns) / 1e6)
        finished_ms.append((ended_ns - exit_ns) / 1e6)
        notified_ms.append((int(sent.timestamp() * 1e9) - inserted_ns) / 1e6)
        built_ns = int(found["built_at"].timestamp() * 1e9)
        spawned_ns = int(found["submitted_at"].timestamp() * 1e9)
        steps["insert -> built"].append((built_ns - inserted_ns) / 1e6)
        steps["built -> spawned"].append((spawned_ns - built_ns) / 1e6)
        steps["spawned -> started"].append((start_ns - spawned_ns) / 1e6)
        time.sleep(pause)
    return LatencyResult(count, started_ms, finished_ms, notified_ms, states, steps)


def preload(jobs: Collection[Any], *, ended: int, waiting: int, waiting_dir: Path,
            seed: int = 1, batch: int = 5000) -> float:
    """Insert ``ended`` ended jobs (as the engine leaves them) and ``waiting`` jobs routed to the
    saturated system ``busy`` (as the engine leaves a job put back for lack of a slot).
    Returns the seconds it took."""
    rng = random.Random(seed)
    began = time.monotonic()
    now = datetime.now(UTC)
    buffer: list[dict[str, Any]] = []
    for index in range(ended + waiting):
        at = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
        doc = (ended_job(index, at, rng) if index < ended
               else waiting_job(index, at, waiting_dir))
        buffer.append(doc)
        if len(buffer) >= batch:
            jobs.insert_many(buffer, ordered=False)
            buffer = []
    if buffer:
        jobs.insert_many(buffer, ordered=False)
    return time.monotonic() - began


def _history(at: datetime, states: list[str], by: str) -> list[Mapping[str, Any]]:
    return [{"state": s, "at": at + timedelta(milliseconds=5 * i), "by": by}
            for i, s in enumerate(states)]


def ended_job(index: int, at: datetime, rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    state, code = ("finished", 0) if roll < 0.9 else ("error", 1) if roll < 0.98 else ("killed",
                                                                                      143)
    project = f"project-{index % 7}"
    job_dir = f"/var/lib/execd/jobs/{project}/old-{index:07d}"
    done = at + timedelta(seconds=rng.uniform(1, 3600))
    doc: dict[str, Any] = {
        "state": state, "command": ["blastall", "-p", "blastp", "-i", "query.fa"],
        "name": "blast", "owner": f"user{index % 50}@example.org", "project": project,
        "history": _history(at, ["building", "to be submitted", "running", state],
                            "old-host/0/actor/1"),
        "job_dir": job_dir, "route": "default", "system": "local", "host": "old-host",
        "native_id": f"{10000 + index % 50000}:{index}", "exit_code": code,
        "created_at": at, "built_at": at, "submitted_at": at, "started_at": at,
        "ended_at": done, "updated_at": done,
        "outputs": [{"path": "job.stdout", "size": rng.randint(0, 10000)},
                    {"path": "job.stderr", "size": 0}],
        "submission": {"attempts": 1},
        "notification": {"state": "sent", "attempts": 1, "done": ["hooks"],
                         "sent_at": done + timedelta(milliseconds=50)},
        "metadata": {"preloaded": True},
    }
    if state != "finished":
        doc["status_message"] = f"exit code {code}"
    return doc


def waiting_job(index: int, at: datetime, job_dir: Path) -> dict[str, Any]:
    return {
        "state": "to be submitted", "command": ["sleep", "1"], "name": "sleep",
        "owner": f"user{index % 50}@example.org", "project": "busy",
        "history": _history(at, ["building", "to be submitted"], "old-host/0/building/1"),
        "job_dir": str(job_dir), "route": "busy", "system": "busy",
        "created_at": at, "built_at": at, "updated_at": at,
        "submission": {"attempts": 0}, "metadata": {"preloaded": True},
    }

