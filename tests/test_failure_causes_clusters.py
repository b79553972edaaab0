"""Why jobs end, told by the real schedulers: each cluster system's report carries the cause its
scheduler's own records show (walltime, memory, a kill by the system or its operator) and what
the job used, and no cause where they show none.

Slurm and Torque run on the provisioned one-host Slurm cluster (Torque through Slurm's Torque
wrappers), Grid Engine on its one-host cell, through the systems' own ``run`` and
``get_statuses`` (Grid Engine from DRMAA worker processes, as the engine's actors use it: one
submits, another follows, as the Submit and Status actors do), and once through a daemon
(the cause and usage in the job document). The only slow test is the Slurm (and Torque)
walltime one: Slurm counts limits in minutes and checks them every 30 s or so, so a job of
``--time=1`` ends after 60-100 s; Grid Engine enforces ``h_rt`` by the second but writes its
accounting every 15 s.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from execution_engine.states import JobState
from execution_engine.systems.base import JobSpec, Resources, StatusReport
from execution_engine.systems.ogs import OgsSystem
from execution_engine.systems.slurm import SlurmSystem
from execution_engine.systems.torque import TorqueSystem
from tests.cluster_helpers import (
    Cluster,
    DrmaaWorker,
    cluster_environment,
    has_started,
    make_job,
    sge_cluster,
    slurm_cluster,
    submit,
    torque_cluster,
    wait_reports,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

__all__ = ["sge_cluster", "slurm_cluster", "torque_cluster"]  # fixtures used by name

HOST = os.uname().nodename.split(".")[0]
#: Three processes of 60 MB each: none is refused by the per-process limit Grid Engine sets
#: for h_vmem=100M, together they exceed it, and the execution daemon kills the job.
THREE_60MB_PROCESSES = ["sh", "-c", "for i in 1 2 3; do python3 -c 'import time; "
                        "x = bytearray(60 * 1024 * 1024); time.sleep(120)' & done; wait"]


def ended(report: StatusReport) -> bool:
    return report.state is not None and report.state.is_ended


def run_command(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, timeout=60, capture_output=True,
                   env={**os.environ, **(env or {})})


def wait_started(system: Any, jobs: list[JobSpec]) -> None:
    """Until the scheduler runs the jobs and their scripts have started."""
    wait_reports(system, jobs, lambda r: r.state is JobState.RUNNING, timeout=120)
    deadline = time.monotonic() + 60
    while not all(has_started(job) for job in jobs):
        assert time.monotonic() < deadline, "the job scripts did not start"
        time.sleep(0.2)


# ---------------------------------------------------------------------- Slurm and Torque
@pytest.fixture
def slurm(slurm_cluster: Cluster) -> Iterator[SlurmSystem]:
    system = SlurmSystem("slurm-causes", slurm_cluster.options)
    yield system
    system.close()


@pytest.fixture
def torque(torque_cluster: Cluster) -> Iterator[TorqueSystem]:
    system = TorqueSystem("torque-causes", torque_cluster.options)
    yield system
    system.close()


@pytest.mark.slow
def test_walltime_exceeded_on_slurm_and_through_the_torque_wrappers(
        slurm: SlurmSystem, torque: TorqueSystem, tmp_path: Path) -> None:
    """Slurm says TIMEOUT: walltime_exceeded, with the wall time and node; later, gone from
    squeue, the jobcomp log says the same. Slurm's Torque wrappers show only C: the cause stays
    the exit code's (a signal), never a guess. Both run at once (one slow wait for both)."""
    limit = Resources(walltime_s=60)
    on_slurm = submit(slurm, make_job(tmp_path, ["sleep", "600"], resources=limit))
    on_torque = submit(torque, make_job(tmp_path, ["sleep", "600"], resources=limit))
    slurm_report = wait_reports(slurm, [on_slurm], ended, timeout=240, interval=2)[0]
    torque_report = wait_reports(torque, [on_torque], ended, timeout=240, interval=2)[0]

    report = slurm_report[on_slurm.job_id]
    assert (report.state, report.exit_code, report.reason) == (
        JobState.ERROR, 143, "walltime_exceeded"), report
    assert "(Slurm state TIMEOUT)" in report.message
    assert report.usage is not None and report.usage.node == HOST
    assert report.usage.wall_s is not None and report.usage.wall_s >= 60

    report = torque_report[on_torque.job_id]
    assert (report.state, report.exit_code, report.reason) == (JobState.ERROR, 143, None), report
    assert report.usage is not None and report.usage.node == HOST  # exec_host: all it tells

    # The same job once squeue has forgotten it (after MinJobAge): the jobcomp log tells.
    commands = slurm.status_commands
    gone = slurm.resolve_missing([on_slurm])[on_slurm.job_id]
    assert slurm.status_commands == commands + 1
    assert (gone.state, gone.reason) == (JobState.ERROR, "walltime_exceeded"), gone
    assert "Slurm accounting: state TIMEOUT" in gone.message
    assert gone.usage is not None and gone.usage.node == HOST


def test_slurm_cancellation_by_an_operator_is_killed_by_system(
        slurm: SlurmSystem, tmp_path: Path) -> None:
    job = submit(slurm, make_job(tmp_path, ["sleep", "600"]))
    wait_started(slurm, [job])
    run_command(["scancel", job.native_id or ""])  # not the engine's kill: no record of it
    report = wait_reports(slurm, [job], ended, timeout=60)[0][job.job_id]
    assert (report.state, report.reason) == (JobState.KILLED, "killed_by_system"), report
    assert "Slurm state CANCELLED" in report.message


def test_jobs_slurm_forgot_are_resolved_by_one_jobcomp_call(
        slurm: SlurmSystem, tmp_path: Path) -> None:
    """Jobs squeue no longer lists (here asked as such: MinJobAge is an hour on this cluster)
    are resolved through the real jobcomp log, in one ``sacct -c`` for all of them: the exit
    code and the usage of a job that failed; a job Slurm never knew has no cause."""
    failed = submit(slurm, make_job(tmp_path, ["sh", "-c", "exit 3"]))
    wait_reports(slurm, [failed], ended, timeout=60)
    unknown = replace(make_job(tmp_path, ["true"]), native_id="999999999")
    commands = slurm.status_commands
    reports = slurm.resolve_missing([failed, unknown])
    assert slurm.status_commands == commands + 1
    report = reports[failed.job_id]
    assert (report.state, report.exit_code, report.reason) == (JobState.ERROR, 3, None)
    assert "Slurm accounting: state FAILED, exit code 3:0" in report.message
    assert report.usage is not None and report.usage.node == HOST
    report = reports[unknown.job_id]
    assert (report.state, report.reason) == (JobState.ERROR, None), report
    assert report.message.endswith("(no longer known to Slurm, nor to its accounting)")


@pytest.mark.parametrize("setting", ["JobCompType=jobcomp/none",
                                     "JobCompLoc=/nonexistent/jobcomp.log"])
def test_slurm_without_a_jobcomp_log_leaves_the_cause_unknown(
        slurm_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        setting: str) -> None:
    """A site without job completion logging, or whose log cannot be opened: the real
    ``sacct -c`` (with the cluster's configuration changed as a site's would be) fails, and
    that fails no status cycle and claims no cause."""
    key = setting.partition("=")[0]
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    lines = [setting if line.startswith(f"{key}=") else line
             for line in conf.read_text().splitlines()]
    (tmp_path / "slurm.conf").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))  # read by sacct
    system = SlurmSystem("slurm-nojobcomp", slurm_cluster.options)
    job = replace(make_job(tmp_path, ["true"]), native_id="999999999")
    report = system.resolve_missing([job])[job.job_id]
    assert (report.state, report.reason) == (JobState.ERROR, None), report
    assert report.message.endswith("(no longer known to Slurm)")


def test_torque_wrappers_give_the_node(torque: TorqueSystem, tmp_path: Path) -> None:
    job = submit(torque, make_job(tmp_path, ["sh", "-c", "exit 3"]))
    report = wait_reports(torque, [job], ended, timeout=60)[0][job.job_id]
    assert (report.state, report.exit_code, report.reason) == (JobState.ERROR, 3, None)
    assert report.usage is not None and report.usage.node == HOST


# ---------------------------------------------------------------------- Grid Engine
@pytest.fixture
def workers(sge_cluster: Cluster) -> Iterator[Callable[..., DrmaaWorker]]:
    made: list[DrmaaWorker] = []

    def make(**overrides: Any) -> DrmaaWorker:
        worker = DrmaaWorker(OgsSystem, "sge-causes", {**sge_cluster.options, **overrides})
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


def test_grid_engine_limits_end_jobs_with_their_causes(
        workers: Callable[..., DrmaaWorker], tmp_path: Path) -> None:
    """h_rt exceeded: walltime_exceeded; h_vmem exceeded (three processes the execution daemon
    kills together): memory_exceeded; the job of another session, followed as the Status actor
    does (from Grid Engine's accounting), and the submitting session's own (from DRMAA's
    JobInfo)."""
    submitter, follower = workers(), workers()
    walltime = submit(submitter, make_job(tmp_path, ["sleep", "600"],
                                          resources=Resources(walltime_s=5)))
    memory = submit(submitter, make_job(tmp_path, THREE_60MB_PROCESSES,
                                        resources=Resources(memory_mb=100)))
    own = submit(submitter, make_job(tmp_path, ["sleep", "600"],
                                     resources=Resources(walltime_s=5)))
    reports = wait_reports(follower, [walltime, memory], ended, timeout=180)[0]
    own_report = wait_reports(submitter, [own], ended, timeout=180)[0][own.job_id]

    report = reports[walltime.job_id]
    assert (report.state, report.exit_code, report.reason) == (
        JobState.ERROR, None, "walltime_exceeded"), report
    assert "Grid Engine accounting: failed 37" in report.message
    assert report.usage is not None
    assert (report.usage.node, report.usage.signal) == (HOST, "SIGKILL")
    assert report.usage.wall_s is not None and report.usage.wall_s >= 5

    report = reports[memory.job_id]
    assert (report.state, report.reason) == (JobState.ERROR, "memory_exceeded"), report
    assert report.usage is not None and report.usage.node == HOST

    assert (own_report.state, own_report.reason) == (JobState.ERROR, "walltime_exceeded"), \
        own_report


def test_grid_engine_qdel_by_an_operator_is_killed_by_system(
        workers: Callable[..., DrmaaWorker], sge_cluster: Cluster, tmp_path: Path) -> None:
    submitter, follower = workers(), workers()
    job = submit(submitter, make_job(tmp_path, ["sleep", "600"],
                                     resources=Resources(walltime_s=3600)))
    wait_started(follower, [job])
    run_command(["qdel", job.native_id or ""], cluster_environment())
    report = wait_reports(follower, [job], ended, timeout=120)[0][job.job_id]
    assert (report.state, report.reason) == (JobState.ERROR, "killed_by_system"), report
    assert "failed 100" in report.message


def test_grid_engine_job_that_exits_by_itself_waits_for_nothing(
        workers: Callable[..., DrmaaWorker], tmp_path: Path) -> None:
    """Its exit code says how it ended: reported at once, not held for the accounting."""
    submitter, follower = workers(), workers(accounting_wait=600)
    job = submit(submitter, make_job(tmp_path, ["sh", "-c", "exit 3"]))
    report = wait_reports(follower, [job], ended, timeout=40)[0][job.job_id]
    assert (report.state, report.exit_code, report.reason) == (JobState.ERROR, 3, None)


# ---------------------------------------------------------------------- through the engine
def ogs_daemon_config(cluster: Cluster) -> str:
    """A daemon whose only system is the Grid Engine cell (its Status actor follows jobs from
    a session of its own: the accounting tells it why they ended)."""
    options = [f"{key} = {value}" for key, value in cluster.options.items() if value]
    return "\n".join(["[systems]", "[[sge]]", "class = ogs", "status_interval = 1", *options,
                      "", "[routes]", "[[default]]", "system = sge", ""])


def test_engine_records_the_cause_and_usage_of_an_h_rt_kill(
        engine_factory: Callable[..., Any], sge_cluster: Cluster) -> None:
    daemon = engine_factory(ogs_daemon_config(sge_cluster))
    job = daemon.submit("sleep", "600", requirements={"walltime_s": 5})
    (doc,) = daemon.wait_ended([job], timeout=120)
    assert (doc["state"], doc["reason"], doc.get("exit_code")) == (
        "error", "walltime_exceeded", None), doc.get("status_message")
    assert "Grid Engine accounting: failed 37" in doc["status_message"]
    assert doc["usage"]["node"] == HOST
    assert doc["usage"]["wall_s"] >= 5


#: Allocates and touches 200 MB, spins 2 s of CPU, then sleeps until 110 s have passed: over a
#: walltime of one minute, within three. Slurm ends a job over its time limit at its next check
#: of limits (every 30 s or so): a margin of less than that lets the job finish first.
BUSY_110_SECONDS = ["python3", "-c", (
    "import time\n"
    "began = time.monotonic()\n"
    "block = bytearray(200 * 1024 * 1024)\n"
    "block[::4096] = b'x' * len(block[::4096])\n"
    "spin = time.process_time()\n"
    "while time.process_time() - spin < 2: pass\n"
    "time.sleep(max(0, 110 - (time.monotonic() - began)))\n")]


@pytest.mark.slow
def test_engine_resubmits_a_slurm_walltime_failure_with_more_and_records_its_usage(
        engine_factory: Callable[..., Any], slurm_cluster: Cluster) -> None:
    """A daemon on Slurm: the first attempt runs over its minute and Slurm ends it (TIMEOUT),
    the policy triples the walltime, the second attempt finishes; each attempt's usage is what
    the job used (GNU time in the job script: this cluster gathers no accounting itself)."""
    daemon = engine_factory(
        "[systems]\n[[slurm]]\nclass = slurm\nstatus_interval = 2\n\n"
        "[routes]\n[[default]]\nsystem = slurm\nresubmit_on = walltime_exceeded\n"
        "resubmit_attempts = 2\nresubmit_scale = walltime_s=3\n")
    job = daemon.submit(*BUSY_110_SECONDS, requirements={"walltime_s": 60})
    (doc,) = daemon.wait_ended([job], timeout=480)
    assert (doc["state"], doc.get("attempt"), doc["requirements"]) == (
        "finished", 2, {"walltime_s": 180}), (doc["state"], doc.get("status_message"))
    (first,) = doc["attempts"]
    assert first["reason"] == "walltime_exceeded", first
    assert first["usage"]["node"] == HOST and first["usage"]["wall_s"] >= 60, first["usage"]
    usage = doc["usage"]
    assert usage["max_rss_mb"] >= 200, usage
    assert 1.5 <= usage["cpu_s"] <= 6, usage
    assert usage["wall_s"] >= 110 and usage["node"] == HOST, usage
