"""The engine on real clusters: a running daemon (``execd run``) whose only execution system is
Grid Engine (DRMAA), Torque (Slurm's Torque wrappers) or Slurm, on the clusters of
``scripts/provision-clusters.sh``.

Everything goes through the daemon: jobs are inserted into MongoDB, kills are asked with
``execd kill``, and the outcome is read from the job documents, the job directories, a ledger
file every counted job appends its id to (how many times each job *ran*) and the scheduler's
own records of jobs named with the job's tag (how many times each job was *submitted*).

Absent clusters skip these tests, or fail them under ``CI=true`` (the cluster fixtures).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from execution_engine.systems.ogs import parse_qstat_xml
from tests.cluster_helpers import (
    Cluster,
    cluster_environment,
    sge_cluster,
    slurm_cluster,
    torque_cluster,
)
from tests.conftest import Engine

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

__all__ = ["sge_cluster", "slurm_cluster", "torque_cluster"]  # fixtures used by name

KINDS = ("ogs", "torque", "slurm")
ENDED = ("finished", "error", "killed")
ACTIVE = ("submitted", "pending", "running", "hold")


# ---------------------------------------------------------------------- the system under test
@dataclass(frozen=True)
class Target:
    """One cluster execution system as the daemon is configured with it."""

    kind: str
    cluster: Cluster
    options: dict[str, Any]
    system_class: str = ""
    """The class of the system (default: the kind's own)."""

    @property
    def name(self) -> str:
        return f"{self.kind}-cluster"

    def config(self, *, submit_actors: int = 1, batch_size: int = 100,
               rules_dir: Path | None = None, systems_dir: Path | None = None) -> str:
        """The daemon's extra config: this system, one default route to it (through the rule
        ``paced`` of ``rules_dir`` when given)."""
        lines = [f"{key} = {value}" for key, value in self.options.items() if value != ""]
        plugins = ["[plugins]",
                   *([f"routing_rules = {rules_dir}"] if rules_dir else []),
                   *([f"systems = {systems_dir}"] if systems_dir else []),
                   ""] if rules_dir or systems_dir else []
        return "\n".join([
            "[actors]",
            f"submit = {submit_actors}",
            f"batch_size = {batch_size}",
            "",
            *plugins,
            "[systems]",
            f"[[{self.name}]]",
            f"class = {self.system_class or self.kind}",
            "status_interval = 1",
            *lines,
            "",
            "[routes]",
            "[[default]]",
            f"system = {self.name}",
            *(["rules = paced"] if rules_dir else []),
            "",
        ])

    def scheduler_jobs(self, tags: Iterable[str]) -> Counter[str]:
        """How many scheduler jobs carry each of ``tags`` as their name (ended ones included)."""
        wanted = set(tags)
        ids_by_name = grid_engine_jobs() if self.kind == "ogs" else slurm_jobs()
        return Counter({name: len(ids) for name, ids in ids_by_name.items() if name in wanted})


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{argv}: {result.returncode} {result.stderr}"
    return result.stdout


def slurm_jobs() -> dict[str, set[str]]:
    """Job name -> Slurm job ids: jobs in slurmctld's memory (``squeue -t all``, ended ones
    until MinJobAge) and every ended job of the jobcomp file (``sacct -c``)."""
    found: dict[str, set[str]] = {}
    listings = (_run(["squeue", "-h", "-t", "all", "-o", "%i|%j"]),
                _run(["sacct", "-c", "-n", "-P", "-o", "jobid,jobname"]))
    for listing in listings:
        for line in listing.splitlines():
            job_id, _, name = line.strip().partition("|")
            if job_id and "." not in job_id:
                found.setdefault(name, set()).add(job_id)
    return found


def grid_engine_jobs() -> dict[str, set[str]]:
    """Job name -> Grid Engine job numbers: queued and running jobs (``qstat -xml``) and ended
    ones (the accounting, ``qacct -j 'execd-*'``)."""
    env = cluster_environment()
    found: dict[str, set[str]] = {}
    for number, name in parse_qstat_xml(_run(["qstat", "-u", "*", "-xml"], env)).items():
        found.setdefault(name, set()).add(number)
    accounting = subprocess.run(["qacct", "-j", "execd-*"], capture_output=True, text=True,
                                timeout=60, check=False, env={**os.environ, **env})
    name = ""
    for line in accounting.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "jobname":
            name = value.strip()
        elif key == "jobnumber" and name:
            found.setdefault(name, set()).add(value.strip())
    return found


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest) -> Target:
    kind = request.param
    if kind == "ogs":
        cluster: Cluster = request.getfixturevalue("sge_cluster")
    elif kind == "torque":
        cluster = request.getfixturevalue("torque_cluster")
    else:
        cluster = request.getfixturevalue("slurm_cluster")
    return Target(kind, cluster, dict(cluster.options))


@pytest.fixture
def daemon(engine_factory: Callable[..., Engine], target: Target) -> Engine:
    return engine_factory(target.config())


# ---------------------------------------------------------------------- helpers
def tag(job_id: Any) -> str:
    return f"execd-{job_id}"


def counted_jobs(engine: Engine, ledger: Path, n: int, sleep: float = 0) -> list[Any]:
    """``n`` jobs that each append their id to ``ledger`` once: how many times each ran.
    (Appends of one short line with O_APPEND do not interleave.)"""
    docs = [{"state": "to be built", "name": f"counted-{i}",
             "command": ["sh", "-c", f'sleep {sleep}; echo "$EXECD_JOB_ID" >> {ledger}']}
            for i in range(n)]
    return list(engine.store.jobs.insert_many(docs).inserted_ids)


def ledger_lines(ledger: Path) -> list[str]:
    return ledger.read_text().split() if ledger.exists() else []


def states(engine: Engine, ids: list[Any]) -> Counter[str]:
    return Counter(str(d.get("state")) for d in engine.store.jobs.find(
        {"_id": {"$in": ids}}, {"state": 1}))


def assert_all_finished_once(engine: Engine, target: Target, ids: list[Any], ledger: Path,
                             timeout: float = 240) -> None:
    """Every job finished, ran once (ledger) and was submitted once (scheduler records)."""
    docs = engine.wait_ended(ids, timeout=timeout)
    assert Counter(d["state"] for d in docs) == {"finished": len(ids)}, \
        Counter((d["state"], d.get("status_message")) for d in docs).most_common(5)
    assert all(d.get("exit_code") == 0 and d.get("native_id") for d in docs)
    runs = Counter(ledger_lines(ledger))
    assert set(runs) == {str(i) for i in ids}
    assert max(runs.values()) == 1, [k for k, v in runs.items() if v > 1][:5]
    tags = [tag(i) for i in ids]
    # The scheduler may record an ended job a moment after its exit-code file was written.
    deadline = time.monotonic() + 60
    while len(submitted := target.scheduler_jobs(tags)) < len(tags) \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert set(submitted) == set(tags), f"{len(set(tags) - set(submitted))} never submitted"
    twice = {name: n for name, n in submitted.items() if n > 1}
    assert not twice, f"submitted more than once: {twice}"


# ---------------------------------------------------------------------- a job's life
def test_jobs_end_with_their_output_and_exit_code(daemon: Engine, target: Target) -> None:
    good = daemon.submit("sh", "-c", "echo hello from $EXECD_JOB_ID; echo note >&2")
    bad = daemon.submit("sh", "-c", "echo oops >&2; exit 3")
    good_doc, bad_doc = daemon.wait_ended([good, bad], timeout=120)

    assert good_doc["state"] == "finished", good_doc.get("status_message")
    assert good_doc["exit_code"] == 0
    assert good_doc["system"] == target.name
    assert good_doc["native_id"]
    assert Path(good_doc["job_dir"], "job.stdout").read_text() == f"hello from {good}\n"
    assert Path(good_doc["job_dir"], "job.stderr").read_text() == "note\n"
    assert {"path": "job.stdout", "size": len(f"hello from {good}\n")} in good_doc["outputs"]
    assert good_doc["submitted_at"] <= good_doc["ended_at"]

    assert bad_doc["state"] == "error"
    assert bad_doc["exit_code"] == 3
    assert "exit code 3" in bad_doc["status_message"]
    assert Path(bad_doc["job_dir"], "job.stderr").read_text() == "oops\n"
    assert daemon.cli("wait", str(bad), check=False).returncode == 1


def test_execd_kill_of_a_running_job_ends_killed(daemon: Engine, target: Target) -> None:
    job = daemon.submit("sleep", "300")

    def job_doc() -> dict[str, Any]:
        doc = daemon.store.get(job)
        assert doc is not None
        return doc

    daemon.wait_for(lambda: job_doc()["state"] == "running"
                    and Path(job_doc()["job_dir"], ".execd", "pid").exists(),
                    timeout=90, what="the job to run")
    pid = int(Path(job_doc()["job_dir"], ".execd", "pid").read_text())
    assert daemon.cli("kill", str(job)).returncode == 0
    (doc,) = daemon.wait_ended([job], timeout=90)
    assert doc["state"] == "killed", doc.get("status_message")
    assert doc["status_message"] == "killed on request"
    # The scheduler stopped the job script (same host: its process is visible here).
    daemon.wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=60,
                    what="the job's process to be gone")


def test_impossible_requests_end_in_error_with_the_schedulers_message(
        daemon: Engine, target: Target) -> None:
    too_big = daemon.submit("echo", "never", requirements={"cores": 4096})
    bad_queue = daemon.submit("echo", "never", requirements={"queue": "nosuchqueue"})
    big_doc, queue_doc = daemon.wait_ended([too_big, bad_queue], timeout=60)
    words = {
        "ogs": ("no suitable queues", "nosuchqueue"),
        "slurm": ("More processors requested than permitted", "invalid partition"),
        "torque": ("More processors requested than permitted", "invalid partition"),
    }[target.kind]
    for doc, scheduler_words in zip((big_doc, queue_doc), words, strict=True):
        assert doc["state"] == "error"
        assert "native_id" not in doc
        message = doc["status_message"]
        assert message.startswith(f"rejected by execution system {target.name}: "), message
        assert scheduler_words.lower() in message.lower(), message
        assert not Path(doc["job_dir"], "job.stdout").exists()


SCHEDULER_COMMANDS = {
    "torque": ("qsub", "qstat", "qdel", "qhold", "qrls"),
    "slurm": ("sbatch", "squeue", "scancel", "scontrol", "sacct"),
}


def wrapped_commands(directory: Path, real: Path, scripts: dict[str, str], kind: str = "torque"
                     ) -> Path:
    """A ``bin_dir`` of the ``kind`` scheduler's commands: ``scripts[name]`` (shell, ``$REAL``
    is the real command's folder) for the named ones, the real commands for the others."""
    directory.mkdir()
    for command in SCHEDULER_COMMANDS[kind]:
        body = scripts.get(command, f'exec "$REAL/{command}" "$@"')
        (directory / command).write_text(f"#!/bin/sh\nREAL={real}\n{body}\n")
        (directory / command).chmod(0o755)
    return directory


def test_submission_in_doubt_is_looked_up_before_it_is_retried(
        engine_factory: Callable[..., Engine], torque_cluster: Cluster, tmp_path: Path) -> None:
    """An overloaded scheduler: ``qsub`` accepts the job but does not answer in time, and
    ``qstat`` fails too, so the engine cannot tell whether the job got through. When the
    scheduler answers again the job must be found by its tag, not submitted a second time."""
    down = tmp_path / "down"
    down.touch()
    accepted = tmp_path / "accepted"
    bin_dir = wrapped_commands(tmp_path / "flaky-torque", Path(torque_cluster.options["bin_dir"]), {
        "qsub": f'"$REAL/qsub" "$@"; rc=$?; echo >> {accepted}\n'
                f'[ -e {down} ] && sleep 60\nexit $rc',
        "qstat": f'if [ -e {down} ]; then echo "qstat: Connection refused" >&2; exit 1; fi\n'
                 f'exec "$REAL/qstat" "$@"',
    })
    target = Target("torque", torque_cluster, {"bin_dir": bin_dir, "command_timeout": 2})
    daemon = engine_factory(target.config())
    ledger = tmp_path / "ledger"
    ids = counted_jobs(daemon, ledger, 1)
    daemon.wait_for(lambda: "torque-cluster unavailable, retrying" in daemon.log_file.read_text(),
                    timeout=60, what="the submission to end in doubt")
    assert accepted.read_text().count("\n") == 1
    down.unlink()
    assert_all_finished_once(daemon, target, ids, ledger, timeout=120)
    assert accepted.read_text().count("\n") == 1, "qsub was called again"


# ---------------------------------------------------------------------- many jobs, crashes
def test_many_jobs_at_once_each_run_exactly_once(engine_factory: Callable[..., Engine],
                                                 target: Target, tmp_path: Path) -> None:
    daemon = engine_factory(target.config(submit_actors=2))
    ledger = tmp_path / "ledger"
    ids = counted_jobs(daemon, ledger, 80)
    assert_all_finished_once(daemon, target, ids, ledger)


def test_batch_outlasting_its_lease_is_not_submitted_twice(
        engine_factory: Callable[..., Engine], torque_cluster: Cluster, tmp_path: Path) -> None:
    """A slow scheduler (each ``qsub`` takes 0.3 s) and two Submit actors: the batch one actor
    claims takes longer to submit than a lease lasts (5 s here). No job may be submitted by both
    actors: the lease of the jobs still to submit is renewed as the batch goes on."""
    slow = wrapped_commands(tmp_path / "slow-torque", Path(torque_cluster.options["bin_dir"]),
                          {"qsub": 'sleep 0.3; exec "$REAL/qsub" "$@"'})
    target = Target("torque", torque_cluster, {**torque_cluster.options, "bin_dir": slow})
    daemon = engine_factory(target.config(submit_actors=2))
    ledger = tmp_path / "ledger"
    ids = counted_jobs(daemon, ledger, 40)
    assert_all_finished_once(daemon, target, ids, ledger)


SYSTEM_CLASSES = {"ogs": ("ogs", "OgsSystem"), "torque": ("torque", "TorqueSystem"),
                  "slurm": ("slurm", "SlurmSystem")}
SLOW_SYSTEM = """
import time

from execution_engine import execution_system
from execution_engine.systems.{module} import {cls}


@execution_system
class SlowToAnswer({cls}):
    kind = "slow-{kind}"

    def run(self, job):
        submission = super().run(job)
        time.sleep(1.5)
        return submission
"""
PACED_RULE = """
import time

from execution_engine import routing_rule


@routing_rule("paced")
def paced(job):
    time.sleep(0.1)
    return True
"""


def kill_while_a_submission_is_in_doubt(daemon: Engine, target: Target, ids: list[Any]) -> None:
    """SIGKILL the whole engine once more jobs are at the scheduler than are recorded (or once
    every job is recorded: there is no window left to kill it in)."""
    tags = [tag(i) for i in ids]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        at_scheduler = len(target.scheduler_jobs(tags))
        recorded = daemon.store.jobs.count_documents({"_id": {"$in": ids},
                                                      "native_id": {"$exists": True}})
        if (at_scheduler >= 3 and at_scheduler > recorded) or recorded == len(ids):
            break
        time.sleep(0.02)
    daemon.kill_all()


def submitted_but_not_recorded(daemon: Engine, target: Target, ids: list[Any]) -> list[Any]:
    """The jobs the scheduler has under their tag while their document has no native id (read
    with the engine dead, so the two agree)."""
    at_scheduler = target.scheduler_jobs(tag(i) for i in ids)
    unrecorded = daemon.store.jobs.find({"_id": {"$in": ids}, "native_id": {"$exists": False}},
                                        {"_id": 1})
    return [d["_id"] for d in unrecorded if at_scheduler[tag(d["_id"])]]


def test_engine_killed_mid_run_loses_and_repeats_nothing(
        engine_factory: Callable[..., Engine], target: Target, tmp_path: Path,
        record_property: Callable[[str, object], None]) -> None:
    """SIGKILL of every engine process while jobs are at the scheduler but their submission is
    not recorded yet: after a restart they are found by their tag, not submitted again.

    A routing rule taking 0.1 s per job spreads the Submit actor's batch over seconds, and the
    system answers 1.5 s after the scheduler queued each job (a drop-in subclass of the real
    system: a slow scheduler), so that the engine dies inside that window. Should the kill
    land just after a record all the same, the engine is started and killed again."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "paced.py").write_text(PACED_RULE)
    systems = tmp_path / "systems"
    systems.mkdir()
    module, cls = SYSTEM_CLASSES[target.kind]
    (systems / "slow.py").write_text(SLOW_SYSTEM.format(module=module, cls=cls,
                                                        kind=target.kind))
    slow = Target(target.kind, target.cluster, target.options, system_class=f"slow-{target.kind}")
    daemon = engine_factory(slow.config(rules_dir=rules, systems_dir=systems))
    ledger = tmp_path / "ledger"
    ids: list[Any] = []
    in_doubt: list[Any] = []
    for _ in range(3):  # the kill can land just after a record: then again, on new jobs
        batch = counted_jobs(daemon, ledger, 20, sleep=0.5)
        ids += batch
        kill_while_a_submission_is_in_doubt(daemon, target, batch)
        in_doubt = submitted_but_not_recorded(daemon, target, batch)
        at_kill = dict(states(daemon, batch))
        record_property("states_at_kill", at_kill)
        print(f"{target.kind}: killed with {len(in_doubt)} jobs at the scheduler but not "
              f"recorded; states: {at_kill}")
        if in_doubt:
            break
        # The jobs this kill left were recovered once: they end before the next kill, which
        # would otherwise take one caught twice for a job that kills its actors (quarantine).
        daemon.start()
        daemon.wait_ended(ids, timeout=240)
    assert in_doubt, "the engine was never killed between a submission and its record"
    daemon.start()
    assert_all_finished_once(daemon, target, ids, ledger)
    assert "not submitting again" in daemon.log_file.read_text()


# ---------------------------------------------------------------------- outage
def scheduler_down(target: Target) -> bool:
    """True when the target's scheduler does not answer."""
    argv = ["qstat"] if target.kind == "ogs" else ["scontrol", "ping"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                                env={**os.environ, **cluster_environment()})
    except subprocess.TimeoutExpired:
        return True
    return result.returncode != 0 or "DOWN" in result.stdout


@pytest.fixture
def outage(target: Target) -> Iterator[Cluster]:
    """The target's cluster, started again after the test whatever happens."""
    try:
        yield target.cluster
    finally:
        target.cluster.start()


def test_scheduler_outage_leaves_jobs_alone_and_they_resume(
        engine_factory: Callable[..., Engine], target: Target, outage: Cluster,
        tmp_path: Path) -> None:
    """The scheduler's daemons stopped for a while: no job is failed meanwhile (status and
    submission are retried with backoff), and every job finishes, once, when it is back.

    Slurm's commands retry for about 18 s before they give up: ``command_timeout = 5`` makes the
    engine see the outage (and back off) within the window instead of waiting on them."""
    if target.kind != "ogs":
        target = Target(target.kind, target.cluster, {**target.options, "command_timeout": 5})
    daemon = engine_factory(target.config())
    ledger = tmp_path / "ledger"
    before = counted_jobs(daemon, ledger, 4, sleep=3)
    # Stop only once every job runs: a launch in flight when the node's daemon stops can be
    # lost by the scheduler itself (Slurm then shows the job RUNNING, never started).
    daemon.wait_for(lambda: set(states(daemon, before)) <= set(ACTIVE) and all(
        Path(doc["job_dir"], ".execd", "pid").exists()
        for doc in daemon.store.jobs.find({"_id": {"$in": before}}, {"job_dir": 1})),
        timeout=90, what="every job to run")
    outage.stop()
    stopped_at = time.monotonic()
    during = counted_jobs(daemon, ledger, 4)  # to submit while the scheduler is down
    time.sleep(12)  # status calls and submissions fail meanwhile
    seen, seen_during = states(daemon, before + during), states(daemon, during)
    assert scheduler_down(target), "the scheduler came back during the outage (restarted by " \
                                   "someone else?): the test proves nothing"
    outage.start()
    down_for = time.monotonic() - stopped_at
    assert not seen.keys() & set(ENDED), f"jobs ended while the scheduler was down: {seen}"
    assert set(seen_during) <= {"to be built", "building", "to be submitted", "submitting"}
    log_text = daemon.log_file.read_text()
    assert f"cannot ask {target.name} for the status" in log_text, "the outage went unseen"
    print(f"{target.kind}: scheduler down for {down_for:.0f}s; job states meanwhile: "
          f"{dict(seen)}")
    assert_all_finished_once(daemon, target, before + during, ledger, timeout=300)
