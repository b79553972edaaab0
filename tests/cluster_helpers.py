"""Shared helpers of the cluster tests (Grid Engine, Torque, Slurm): fixtures that find the
clusters, job directories with forged job scripts, a worker process for DRMAA, and one contract
suite that every cluster execution system passes.

Clusters come from ``scripts/provision-clusters.sh``. When one is absent its tests are skipped
with the reason, except under ``CI=true``, where an absent cluster is a failure.

DRMAA runs in a worker process (:class:`DrmaaWorker`, this module run with ``--worker``) started
with the system's :meth:`process_environment`, exactly as the engine starts its actor processes:
libdrmaa can only be loaded by a process *started* with extra static TLS, and holds one session
per process. The test process therefore never loads libdrmaa, each worker is a fresh process
with a fresh session (which is also how "a restarted daemon" is simulated), and the tests drive
the real :class:`OgsSystem` through a proxy with the same methods.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import pytest

from execution_engine import errors
from execution_engine.jobscript import forge_script, job_environment, make_job_dir, write_script
from execution_engine.states import JobState
from execution_engine.systems.base import (
    PID_NAME,
    ExecutionSystem,
    JobSpec,
    Resources,
    StatusReport,
)
from tests.support.cluster_env import cluster_environment  # one reader of the provisioning's env

ROOT = Path(__file__).resolve().parent.parent
PROVISION = ROOT / "scripts" / "provision-clusters.sh"
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"

__all__ = [
    "Cluster",
    "ClusterContract",
    "DrmaaWorker",
    "cluster_environment",
    "cluster_unavailable",
    "has_started",
    "make_job",
    "sge_cluster",
    "slurm_cluster",
    "submit",
    "torque_cluster",
    "wait_reports",
]


# ---------------------------------------------------------------------- clusters
def cluster_unavailable(reason: str) -> None:
    """Skip the test, or fail it when ``CI=true`` (CI must run every cluster test)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _answers(argv: Sequence[str], env: Mapping[str, str] | None = None, expect: str = ""
             ) -> str | None:
    """None when the command succeeds (and prints ``expect``), else what went wrong."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30,
                                env={**os.environ, **(env or {})}, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(argv)}` failed: {exc}"
    if result.returncode != 0 or expect not in result.stdout:
        return (f"`{' '.join(argv)}` exited with {result.returncode}: "
                f"{(result.stdout + result.stderr).strip()[:300]}")
    return None


@dataclass
class Cluster:
    """A running test cluster: the options of its execution system and how to stop it."""

    name: str
    options: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the cluster's daemons with the provisioning script (by their pid files)."""
        _provision(self.name, "--stop")

    def start(self) -> None:
        """Start the cluster again (the provisioning script is idempotent)."""
        _provision(self.name)


def _provision(*args: str) -> None:
    subprocess.run(["bash", str(PROVISION), *args], check=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="session")
def sge_cluster() -> Cluster:
    """The Grid Engine cell (qmaster answering, DRMAA library and binding present)."""
    env = {k: v for k, v in cluster_environment().items() if k.startswith(("SGE_", "DRMAA_"))}
    library = env.get("DRMAA_LIBRARY_PATH", "")
    if not library or not Path(library).exists():
        cluster_unavailable(f"no Grid Engine DRMAA library (DRMAA_LIBRARY_PATH={library!r}; "
                            f"run scripts/provision-clusters.sh sge)")
    if shutil.which("qstat") is None:
        cluster_unavailable("no Grid Engine qstat on PATH (run scripts/provision-clusters.sh sge)")
    import importlib.util

    if importlib.util.find_spec("drmaa") is None:
        cluster_unavailable("the Python DRMAA binding is not installed (pip install drmaa)")
    problem = _answers(["qstat", "-f"], env, expect="all.q")
    if problem:
        cluster_unavailable(f"Grid Engine does not answer: {problem}")
    options = {"library": library, "sge_root": env.get("SGE_ROOT", ""),
               "sge_cell": env.get("SGE_CELL", "")}
    return Cluster("sge", options, env)


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """The Slurm cluster (controller up, a node taking jobs)."""
    if shutil.which("sbatch") is None:
        cluster_unavailable("no Slurm sbatch on PATH (run scripts/provision-clusters.sh slurm)")
    problem = _answers(["scontrol", "ping"], expect="UP") or _answers(
        ["sinfo", "-h", "-o", "%T"])
    if problem:
        cluster_unavailable(f"Slurm does not answer: {problem}")
    return Cluster("slurm", {})


@pytest.fixture(scope="session")
def torque_cluster(slurm_cluster: Cluster) -> Cluster:
    """Torque commands (Slurm's wrappers, in EXECD_TORQUE_BIN) on the Slurm cluster."""
    bin_dir = cluster_environment().get("EXECD_TORQUE_BIN", "/opt/slurm-torque/bin")
    if not (Path(bin_dir) / "qsub").exists():
        cluster_unavailable(f"no Torque qsub in {bin_dir} (run scripts/provision-clusters.sh "
                            f"slurm)")
    return Cluster("slurm", {"bin_dir": bin_dir})


# ---------------------------------------------------------------------- jobs
def make_job(base: Path, command: Sequence[str], *, resources: Resources | None = None,
             name: str = "test job") -> JobSpec:
    """A job directory under ``base`` with its forged job script, as the Building actor makes
    it; the job id is unique (the tag too)."""
    job_id = uuid.uuid4().hex[:16]
    job_dir = base / job_id
    make_job_dir(job_dir)
    env = job_environment(job_id=job_id, name=name, job_dir=str(job_dir), project="tests",
                          owner=None, job_path=JOB_PATH)
    job = JobSpec(job_id=job_id, name=name, job_dir=job_dir, resources=resources or Resources())
    write_script(job.script, forge_script(job_id=job_id, job_dir=str(job_dir), command=command,
                                          environment=env))
    return job


def submit(system: Any, job: JobSpec) -> JobSpec:
    """``job`` submitted to ``system``, with its native id."""
    return replace(job, native_id=system.run(job).native_id)


def has_started(job: JobSpec) -> bool:
    return (job.job_dir / PID_NAME).exists()


def wait_reports(system: Any, jobs: Sequence[JobSpec],
                 until: Callable[[StatusReport], bool] = lambda r: bool(r.state and
                                                                         r.state.is_ended),
                 *, timeout: float = 120, interval: float = 0.5
                 ) -> tuple[dict[str, StatusReport], int]:
    """Ask the status of all ``jobs`` once per cycle until every report satisfies ``until``.
    Returns the last reports and the number of cycles (get_statuses calls)."""
    deadline = time.monotonic() + timeout
    cycles = 0
    while True:
        reports = system.get_statuses(jobs)
        cycles += 1
        if all(job.job_id in reports and until(reports[job.job_id]) for job in jobs):
            return reports, cycles
        if time.monotonic() > deadline:
            pending = {j.job_id: reports.get(j.job_id) for j in jobs
                       if j.job_id not in reports or not until(reports[j.job_id])}
            raise AssertionError(f"after {timeout}s, {len(pending)} jobs not there yet: "
                                 f"{dict(list(pending.items())[:5])}")
        time.sleep(interval)


def state_is(*states: JobState) -> Callable[[StatusReport], bool]:
    return lambda report: report.state in states


# ---------------------------------------------------------------------- DRMAA worker
def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(struct.pack("!I", len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(4)
    if len(header) < 4:
        raise EOFError("the worker closed its pipe")
    (size,) = struct.unpack("!I", header)
    return pickle.loads(stream.read(size))


class DrmaaWorker:
    """An execution system living in a worker process started with the system's
    ``process_environment``; methods are called on it as on the system itself."""

    def __init__(self, cls: type[ExecutionSystem], name: str, options: Mapping[str, Any]
                 ) -> None:
        env = {**os.environ, **cls.process_environment(options),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster_helpers", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env)
        self.pid = self.process.pid
        self._call("create", f"{cls.__module__}:{cls.__qualname__}", name, dict(options))

    def _call(self, method: str, *args: Any) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        _send(self.process.stdin, (method, args))
        kind, value = _receive(self.process.stdout)
        if kind == "ok":
            return value
        error_type, system, reason = value
        error_class = getattr(errors, error_type, None)
        if isinstance(error_class, type) and issubclass(error_class, errors.ExecutionSystemError):
            raise error_class(system, reason)
        raise RuntimeError(f"worker: {error_type}: {reason}")

    @property
    def status_calls(self) -> int:
        return int(self._call("getattr", "status_calls"))

    def run(self, job: JobSpec) -> Any:
        return self._call("run", job)

    def get_statuses(self, jobs: Iterable[JobSpec]) -> dict[str, StatusReport]:
        return dict(self._call("get_statuses", list(jobs)))

    def kill(self, job: JobSpec, force: bool = False) -> None:
        self._call("kill", job, force)

    def find(self, job: JobSpec) -> str | None:
        found = self._call("find", job)
        return None if found is None else str(found)

    def hold(self, job: JobSpec) -> None:
        self._call("hold", job)

    def release(self, job: JobSpec) -> None:
        self._call("release", job)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self._call("close")
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _worker_main() -> None:
    """Serve calls on one execution system: (method, args) in, ("ok"|"error", value) out."""
    import importlib

    requests = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the library prints goes to stderr, not into the answers
    system: Any = None
    while True:
        try:
            method, args = _receive(requests)
        except EOFError:
            break
        try:
            if method == "create":
                module_name, _, class_name = args[0].partition(":")
                cls = getattr(importlib.import_module(module_name), class_name)
                system = cls(args[1], args[2])
                value: Any = None
            elif method == "getattr":
                value = getattr(system, args[0])
            else:
                value = getattr(system, method)(*args)
            _send(answers, ("ok", value))
        except errors.ExecutionSystemError as exc:
            _send(answers, ("error", (type(exc).__name__, exc.system, exc.reason)))
        except Exception as exc:
            _send(answers, ("error", (type(exc).__name__, "", traceback.format_exc())))
        if method == "close":
            break


# ---------------------------------------------------------------------- the contract suite
class ClusterContract:
    """What every cluster execution system does beyond the contract every system keeps
    (``tests/test_contract_systems.py``), tested against the real scheduler: refusals in the
    scheduler's words, many jobs with one status call per cycle, an outage of the scheduler.

    A subclass provides the ``factory`` fixture (a callable returning a new system instance;
    for DRMAA, in a new process) and the attributes below.
    """

    #: A request the scheduler can never satisfy, and words of its refusal.
    impossible = Resources(cores=4096)
    refusal_words = ""

    @pytest.fixture
    def system(self, factory: Callable[..., Any]) -> Iterator[Any]:
        system = factory()
        yield system
        system.close()

    # -- refusals
    def test_impossible_request_is_rejected_with_the_schedulers_message(
            self, system: Any, tmp_path: Path) -> None:
        job = make_job(tmp_path, ["true"], resources=self.impossible)
        with pytest.raises(errors.SubmissionRejected) as caught:
            system.run(job)
        assert self.refusal_words in str(caught.value)

    def test_unknown_queue_is_rejected(self, system: Any, tmp_path: Path) -> None:
        job = make_job(tmp_path, ["true"], resources=Resources(queue="nosuchqueue"))
        with pytest.raises(errors.SubmissionRejected) as caught:
            system.run(job)
        assert "nosuchqueue" in str(caught.value) or "partition" in str(caught.value).lower()

    # -- many jobs, few status calls
    @pytest.mark.slow
    @pytest.mark.parametrize("count", [10, 100])
    def test_many_jobs_end_with_one_status_call_per_cycle(
            self, system: Any, tmp_path: Path, count: int,
            record_property: Callable[[str, object], None]) -> None:
        jobs = [submit(system, make_job(tmp_path, ["sh", "-c", f"exit {i % 2}"]))
                for i in range(count)]
        before = system.status_calls
        reports, cycles = wait_reports(system, jobs, timeout=300, interval=1.0)
        calls = system.status_calls - before
        record_property("status_calls", calls)
        print(f"{type(self).__name__}: {count} jobs ended after {calls} status calls")
        assert calls == cycles  # one status call per cycle, whatever the number of jobs
        commands = getattr(system, "status_commands", None)
        if commands is not None:  # command-line systems: at most squeue + sacct per cycle
            assert commands <= 2 * cycles
        for i, job in enumerate(jobs):
            expected = JobState.FINISHED if i % 2 == 0 else JobState.ERROR
            assert reports[job.job_id].state == expected, (job, reports[job.job_id])
            assert reports[job.job_id].exit_code == i % 2

    # -- outage
    @pytest.mark.slow
    def test_scheduler_outage_is_unavailable_not_failed_jobs(
            self, system: Any, factory: Callable[..., Any], cluster: Cluster,
            tmp_path: Path) -> None:
        job = submit(system, make_job(tmp_path, ["true"]))
        wait_reports(system, [job])
        try:
            cluster.stop()
            with pytest.raises(errors.SystemUnavailable):
                system.get_statuses([job])
            with pytest.raises(errors.SystemUnavailable):
                system.run(make_job(tmp_path, ["true"]))
        finally:
            cluster.start()
        late = submit(system, make_job(tmp_path, ["true"]))
        reports, _ = wait_reports(system, [job, late], timeout=120)
        assert {r.state for r in reports.values()} == {JobState.FINISHED}


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
