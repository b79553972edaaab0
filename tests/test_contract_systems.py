"""The execution-system contract, for every execution system.

Each case runs against: Local; Slurm's and Torque's command-line systems driving a fake batch
scheduler (:mod:`tests.support.fake_scheduler`: real job processes, state in a temporary folder,
no root); Grid Engine's DRMAA system over a fake DRMAA binding (:mod:`tests.support.fake_drmaa`);
and, marked ``cluster``, the real Slurm, Torque and Grid Engine clusters when provisioned
(skipped without them, failed under ``CI=true``).

What every system does: ``run`` gives a native id; ``get_statuses`` answers for many jobs in one
call, queued or running first, then ended with the exit code the job script recorded (0 is
``finished``, anything else ``error``); ``kill`` ends a job as ``killed``; ``find`` locates a
submitted job by its tag from a new instance; ``hold``/``release`` keep a queued job from
starting and let it go (or say that the system cannot hold); a native state the system does not
document is unknown, never success; a job cancelled at the scheduler, not by the engine, is
``killed`` in the scheduler's words; and ``kill``, ``hold`` and ``release`` never act on a
native id the engine did not record for the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from execution_engine.proc import is_running, process_start_time, process_tree
from execution_engine.states import JobState
from execution_engine.systems import records
from execution_engine.systems.base import STDOUT_NAME, JobSpec, StatusReport, ended_report
from execution_engine.systems.local import LocalSystem
from execution_engine.systems.ogs import OgsSystem
from execution_engine.systems.slurm import SlurmSystem
from execution_engine.systems.torque import TorqueSystem
from tests.cluster_helpers import (
    DrmaaWorker,
    has_started,
    make_job,
    sge_cluster,
    slurm_cluster,
    submit,
    torque_cluster,
    wait_reports,
)
from tests.support import fake_drmaa
from tests.support.fake_scheduler import FakeScheduler

__all__ = ["sge_cluster", "slurm_cluster", "torque_cluster"]  # fixtures used by name

CLUSTER = pytest.mark.cluster
FAKES = ["fake-slurm", "fake-torque", "fake-drmaa"]
EVERY_SYSTEM = ["local", *FAKES, pytest.param("slurm", marks=CLUSTER),
                pytest.param("torque", marks=CLUSTER), pytest.param("sge", marks=CLUSTER)]
SCHEDULERS = [name for name in EVERY_SYSTEM if name != "local"]


@dataclass
class Target:
    """One execution system under test and what the contract may expect of it."""

    name: str
    make: Callable[..., Any]
    """A new instance (``**options`` override its configuration); closed at teardown."""
    delayed: Callable[[int], dict[str, Any]] | None = None
    """Options making jobs wait that many seconds before they start; None: cannot hold."""
    hold_reported: bool = True
    """Whether a held job is reported ``hold`` (Slurm's Torque wrappers show it queued)."""
    suspends: bool = True
    """Whether ``hold`` suspends a running job (Torque accepts the hold, and the job runs on)."""
    scheduler: FakeScheduler | None = None
    cancel_at_scheduler: Callable[[str], None] | None = None
    """Cancels a job by its native id the way an operator would, where the system's native
    states say "cancelled"."""
    instances: list[Any] = field(default_factory=list)

    def system(self, **options: Any) -> Any:
        system = self.make(**options)
        self.instances.append(system)
        return system


def _fake_drmaa(monkeypatch: pytest.MonkeyPatch, scheduler: FakeScheduler) -> None:
    monkeypatch.setitem(sys.modules, "drmaa", fake_drmaa)
    monkeypatch.setattr(fake_drmaa, "STATE_DIR", scheduler.state_dir)


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=60)


def _target(name: str, request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Target:
    if name == "local":
        options = {"state_dir": str(tmp_path / "local-state"), "slots": 8, "kill_grace": 1.0,
                   "slot_wait": 0.5}
        return Target(name, lambda **o: LocalSystem("local-test", {**options, **o}))
    if name in FAKES:
        return _fake_target(name, tmp_path, monkeypatch)
    return _cluster_target(name, request)


def _fake_target(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Target:
    scheduler = FakeScheduler(tmp_path / "scheduler", start_delay=0.5)

    def delayed_fake(seconds: int) -> dict[str, Any]:
        # Only the scheduler knows when its jobs start: its delay is set here.
        (scheduler.state_dir / "config.json").write_text(f'{{"start_delay": {seconds}}}')
        return {}

    if name == "fake-slurm":
        bin_dir = str(scheduler.bin_dir("slurm"))
        return Target(name, lambda **o: SlurmSystem("fake-slurm", {"bin_dir": bin_dir, **o}),
                      delayed_fake, scheduler=scheduler,
                      cancel_at_scheduler=lambda i: _run(f"{bin_dir}/scancel", i))
    if name == "fake-torque":
        bin_dir = str(scheduler.bin_dir("torque"))
        return Target(name,
                      lambda **o: TorqueSystem("fake-torque", {"bin_dir": bin_dir, **o}),
                      delayed_fake, scheduler=scheduler, suspends=False)
    _fake_drmaa(monkeypatch, scheduler)
    bin_dir = str(scheduler.bin_dir("sge"))
    return Target(name, lambda **o: OgsSystem("fake-sge", {"bin_dir": bin_dir, **o}),
                  delayed_fake, scheduler=scheduler)


def _cluster_target(name: str, request: pytest.FixtureRequest) -> Target:
    if name == "slurm":
        cluster = request.getfixturevalue("slurm_cluster")
        return Target(name, lambda **o: SlurmSystem("slurm-test", {**cluster.options, **o}),
                      lambda s: {"submit_options": f"--begin=now+{s}"},
                      cancel_at_scheduler=lambda i: _run("scancel", i))
    if name == "torque":
        cluster = request.getfixturevalue("torque_cluster")
        return Target(name, lambda **o: TorqueSystem("torque-test", {**cluster.options, **o}),
                      lambda s: {"submit_options": f"-a now+{s}"}, hold_reported=False,
                      suspends=False)
    cluster = request.getfixturevalue("sge_cluster")

    def sge_delayed(seconds: int) -> dict[str, Any]:
        start = time.localtime(time.time() + seconds)
        return {"native_specification": f"-a {time.strftime('%Y%m%d%H%M.%S', start)}"}

    return Target(name, lambda **o: DrmaaWorker(OgsSystem, "sge-test", {**cluster.options, **o}),
                  sge_delayed)


@pytest.fixture(params=EVERY_SYSTEM)
def target(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[Target]:
    made = _target(request.param, request, tmp_path, monkeypatch)
    yield made
    for system in made.instances:
        system.close()


@pytest.fixture
def system(target: Target) -> Any:
    return target.system()


def state_is(*states: JobState) -> Callable[[StatusReport], bool]:
    return lambda report: report.state in states


def _alive(pid: int) -> bool:
    return is_running(pid)


def command_started(job: JobSpec) -> bool:
    """True once the job's command runs under its script (every system here runs its jobs on
    this host). Before then a TERM would only be noted by the script, and the command would
    start all the same: a test that kills waits for this."""
    try:
        pid = int((job.job_dir / ".execd" / "pid").read_text())
    except (OSError, ValueError):
        return False
    return len(process_tree(pid)) > 1


def running(job: JobSpec) -> Callable[[StatusReport], bool]:
    return lambda report: report.state == JobState.RUNNING and command_started(job)


# ---------------------------------------------------------------------- a job's life
def test_run_returns_a_native_id(system: Any, tmp_path: Path) -> None:
    job = make_job(tmp_path, ["true"])
    submission = system.run(job)
    assert isinstance(submission.native_id, str)
    assert submission.native_id
    assert submission.state in (JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING)
    wait_reports(system, [replace(job, native_id=submission.native_id)])


def test_statuses_in_one_call_then_ended_with_the_recorded_exit_codes(
        system: Any, tmp_path: Path) -> None:
    jobs = [submit(system, make_job(tmp_path, ["sh", "-c", f"sleep 2; exit {code}"]))
            for code in (0, 3)]
    calls = getattr(system, "status_calls", None)
    first = system.get_statuses(jobs)
    assert {job.job_id for job in jobs} <= set(first)
    assert all(first[job.job_id].state in (JobState.PENDING, JobState.RUNNING)
               for job in jobs), first
    if calls is not None:
        assert system.status_calls == calls + 1  # one call for all the jobs
    reports, _ = wait_reports(system, jobs)
    done, failed = (reports[job.job_id] for job in jobs)
    assert (done.state, done.exit_code) == (JobState.FINISHED, 0), done
    assert (failed.state, failed.exit_code) == (JobState.ERROR, 3), failed
    assert "exit code 3" in failed.message
    assert [int(job.exit_code_file.read_text()) for job in jobs] == [0, 3]


def test_job_finishes_with_its_output_and_exit_code_0(system: Any, tmp_path: Path) -> None:
    job = submit(system, make_job(tmp_path, ["sh", "-c", "echo hello from $EXECD_JOB_ID"]))
    reports, _ = wait_reports(system, [job])
    report = reports[job.job_id]
    assert report.state == JobState.FINISHED, report
    assert report.exit_code == 0
    assert (job.job_dir / STDOUT_NAME).read_text() == f"hello from {job.job_id}\n"


def test_failing_job_ends_in_error_with_its_exit_code(system: Any, tmp_path: Path) -> None:
    job = submit(system, make_job(tmp_path, ["sh", "-c", "echo oops >&2; exit 3"]))
    reports, _ = wait_reports(system, [job])
    assert reports[job.job_id].state == JobState.ERROR
    assert reports[job.job_id].exit_code == 3
    assert "exit code 3" in reports[job.job_id].message


def test_kill_ends_the_job_as_killed(system: Any, tmp_path: Path) -> None:
    job = submit(system, make_job(tmp_path, ["sleep", "300"]))
    wait_reports(system, [job], running(job))
    system.kill(job)
    reports, _ = wait_reports(system, [job], timeout=60)
    report = reports[job.job_id]
    assert report.state == JobState.KILLED, report
    assert report.message.startswith("killed by the engine"), report
    assert report.exit_code in (None, 143, 137), report
    system.kill(job)  # killing an ended job is not an error


def test_find_locates_a_submitted_job_by_its_tag(target: Target, system: Any,
                                                 tmp_path: Path) -> None:
    job = submit(system, make_job(tmp_path, ["sleep", "60"]))
    try:
        # Local finds a job by the pid its script recorded: once it has started.
        wait_reports(system, [job], lambda r: r.state == JobState.RUNNING and has_started(job))
        other = target.system()
        assert other.find(replace(job, native_id=None)) == job.native_id
        assert other.find(make_job(tmp_path, ["true"])) is None
    finally:
        system.kill(job, force=True)


def test_find_locates_a_job_that_already_ended(system: Any, tmp_path: Path) -> None:
    job = submit(system, make_job(tmp_path, ["true"]))
    wait_reports(system, [job])
    if isinstance(system, LocalSystem):
        # Local knows an ended job by the pid its script recorded; its status comes from the
        # exit-code file.
        found = system.find(replace(job, native_id=None))
        assert found is not None
        assert found.startswith(f"{(job.job_dir / '.execd' / 'pid').read_text().strip()}:")
        return
    deadline = time.monotonic() + 30
    while (found := system.find(replace(job, native_id=None))) != job.native_id:
        assert time.monotonic() < deadline, f"find() says {found!r}, not {job.native_id}"
        time.sleep(1)


def test_new_instance_tracks_and_kills_jobs_of_the_old_one(target: Target, system: Any,
                                                           tmp_path: Path) -> None:
    short = submit(system, make_job(tmp_path, ["sh", "-c", "sleep 3; echo ok"]))
    long = submit(system, make_job(tmp_path, ["sleep", "300"]))
    system.close()  # the old one is gone (for DRMAA: its process and session too)
    new = target.system()
    reports = new.get_statuses([short, long])
    assert all(r.state in (JobState.PENDING, JobState.RUNNING)
               for r in reports.values()), reports
    wait_reports(new, [long], running(long))
    new.kill(long)
    reports, _ = wait_reports(new, [short, long])
    assert reports[short.job_id].state == JobState.FINISHED
    assert reports[long.job_id].state == JobState.KILLED


def test_hold_keeps_a_queued_job_and_release_lets_it_run(target: Target,
                                                         tmp_path: Path) -> None:
    if target.delayed is None:
        system = target.system()
        job = submit(system, make_job(tmp_path, ["sleep", "30"]))
        with pytest.raises(NotImplementedError):
            system.hold(job)
        with pytest.raises(NotImplementedError):
            system.release(job)
        system.kill(job, force=True)
        return
    system = target.system(**target.delayed(4))
    job = submit(system, make_job(tmp_path, ["sh", "-c", "echo done"]))
    system.hold(job)
    expected = JobState.HOLD if target.hold_reported else JobState.PENDING
    wait_reports(system, [job], state_is(expected), timeout=30)
    time.sleep(6)
    assert system.get_statuses([job])[job.job_id].state == expected
    assert not has_started(job), "the held job started"
    system.release(job)
    reports, _ = wait_reports(system, [job], timeout=90)
    assert reports[job.job_id].state == JobState.FINISHED, reports
    assert (job.job_dir / "job.stdout").read_text() == "done\n"


def test_holding_a_running_job(target: Target, system: Any, tmp_path: Path) -> None:
    """hold() suspends a running job and release() resumes it; Torque accepts the hold of a
    running job and it runs on to its end; Local cannot hold."""
    job = submit(system, make_job(tmp_path, ["sh", "-c", "sleep 3; echo done"]))
    wait_reports(system, [job], lambda r: r.state == JobState.RUNNING and has_started(job))
    if target.delayed is None:
        with pytest.raises(NotImplementedError):
            system.hold(job)
        wait_reports(system, [job])
        return
    if not target.suspends:
        system.hold(job)
        reports, _ = wait_reports(system, [job], timeout=60)
        assert reports[job.job_id].state == JobState.FINISHED
        return
    time.sleep(1)  # well started (Grid Engine loses a suspension sent while it starts a job)
    system.hold(job)
    wait_reports(system, [job], state_is(JobState.HOLD), timeout=30)
    time.sleep(5)
    assert system.get_statuses([job])[job.job_id].state == JobState.HOLD
    assert not job.exit_code_file.exists(), "the suspended job went on running"
    system.release(job)
    reports, _ = wait_reports(system, [job], timeout=90)
    assert reports[job.job_id].state == JobState.FINISHED, reports


@pytest.mark.parametrize("name", FAKES)
def test_an_undocumented_native_state_is_unknown_never_success(
        name: str, request: pytest.FixtureRequest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = _target(name, request, tmp_path, monkeypatch)
    assert target.scheduler is not None
    system = target.system()
    try:
        job = submit(system, make_job(tmp_path, ["sleep", "30"]))
        target.scheduler.show_state(job.native_id or "", "WEIRD_STATE")
        report = system.get_statuses([job])[job.job_id]
        assert report.state is None, report
        assert "WEIRD_STATE" in report.message
    finally:
        system.kill(job, force=True)
        system.close()


@pytest.mark.parametrize("name", ["fake-slurm", pytest.param("slurm", marks=CLUSTER)])
def test_a_job_cancelled_at_the_scheduler_is_killed_in_its_words(
        name: str, request: pytest.FixtureRequest, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = _target(name, request, tmp_path, monkeypatch)
    assert target.cancel_at_scheduler is not None
    system = target.system()
    try:
        job = submit(system, make_job(tmp_path, ["sleep", "300"]))
        wait_reports(system, [job], running(job))
        target.cancel_at_scheduler(job.native_id or "")  # an operator's scancel
        reports, _ = wait_reports(system, [job], timeout=60)
        report = reports[job.job_id]
        assert report.state == JobState.KILLED, report
        assert report.message.startswith("killed by the execution system (Slurm state "
                                          "CANCELLED)"), report
        assert records.recorded_kill(job.job_dir, job.native_id) is None
    finally:
        system.close()


# ---------------------------------------------------------------------- ended reports
def _ended(tmp_path: Path, code: int | None, native_id: str = "7") -> JobSpec:
    job = replace(make_job(tmp_path, ["true"]), native_id=native_id)
    if code is not None:
        job.exit_code_file.write_text(f"{code}\n")
    return job


def test_ended_report_says_killed_when_the_scheduler_says_cancelled(tmp_path: Path) -> None:
    report = ended_report(_ended(tmp_path, 143), "(Slurm state CANCELLED)", JobState.KILLED)
    assert report == StatusReport(
        JobState.KILLED, 143,
        "killed by the execution system (Slurm state CANCELLED), exit code 143 (killed by "
        "signal 15, SIGTERM)")
    report = ended_report(_ended(tmp_path, None), "(Slurm state CANCELLED)", JobState.KILLED)
    assert (report.state, report.exit_code) == (JobState.KILLED, None)
    assert report.message.endswith("without recording an exit code")
    # Completed before the cancellation reached it: its output is whole.
    assert ended_report(_ended(tmp_path, 0), "(Slurm state CANCELLED)",
                        JobState.KILLED) == StatusReport(JobState.FINISHED, 0)


def test_ended_report_keeps_the_exit_code_as_the_truth_otherwise(tmp_path: Path) -> None:
    assert ended_report(_ended(tmp_path, 0), "(Slurm state COMPLETED)",
                        JobState.FINISHED) == StatusReport(JobState.FINISHED, 0)
    report = ended_report(_ended(tmp_path, 2), "(Slurm state COMPLETED)", JobState.FINISHED)
    assert report == StatusReport(JobState.ERROR, 2, "exit code 2")
    report = ended_report(_ended(tmp_path, 143), "(Slurm state TIMEOUT)", JobState.ERROR)
    assert report.state == JobState.ERROR
    assert report.message == "exit code 143 (killed by signal 15, SIGTERM) (Slurm state TIMEOUT)"
    report = ended_report(_ended(tmp_path, None), "(no longer known to Slurm)")
    assert report.state == JobState.ERROR
    assert "without recording an exit code" in report.message


def test_ended_report_says_killed_after_the_engines_own_kill_of_that_run(tmp_path: Path) -> None:
    job = _ended(tmp_path, 143, native_id="12")
    records.record_kill(job.job_dir, "12", "TERM")
    report = ended_report(job)
    assert (report.state, report.exit_code) == (JobState.KILLED, 143)
    assert report.message.startswith("killed by the engine (TERM)")
    # A kill recorded for an earlier run of the same directory says nothing of this one.
    assert ended_report(replace(job, native_id="13")).state == JobState.ERROR


# ---------------------------------------------------------------------- kill safety
def test_local_kill_never_signals_a_process_it_did_not_start(
        tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    system = LocalSystem("local-test", {"state_dir": str(tmp_path / "state"), "slots": 4,
                                        "kill_grace": 1.0, "slot_wait": 0.5})
    try:
        other = submit(system, make_job(tmp_path, ["sleep", "60"]))  # a real job of the engine
        wait_reports(system, [other], running(other))
        start = process_start_time(bystander.pid)
        forged_ids = [f"{bystander.pid}:{start}", f"{bystander.pid}:0", str(bystander.pid),
                      f"{bystander.pid}:junk", f"-{bystander.pid}:{start}"]
        never_started = make_job(tmp_path, ["true"])  # a job directory without a pid record
        for native_id in forged_ids:
            system.kill(replace(never_started, native_id=native_id))
            system.kill(replace(never_started, native_id=native_id), force=True)
        # The record planted too (a job may write into its own directory): still refused.
        (never_started.job_dir / ".execd" / "pid").write_text(f"{bystander.pid}\n")
        system.kill(replace(never_started, native_id=f"{bystander.pid}:{start}"), force=True)
        time.sleep(0.2)
        assert bystander.poll() is None, "a process the engine did not start was signalled"
        assert not (never_started.job_dir / ".execd" / "kill").exists()
        # The engine's own job is killed, even under a forged id: from the pid it recorded.
        system.kill(replace(other, native_id=forged_ids[0]))
        reports, _ = wait_reports(system, [other], timeout=30)
        assert reports[other.job_id].state == JobState.KILLED
        assert bystander.poll() is None
    finally:
        system.close()


@pytest.mark.parametrize("target", SCHEDULERS, indirect=True)
def test_a_scheduler_job_is_touched_only_under_its_recorded_id(target: Target,
                                                               tmp_path: Path) -> None:
    system = target.system()
    victim = submit(system, make_job(tmp_path, ["sleep", "120"]))
    forger = submit(system, make_job(tmp_path, ["sleep", "120"]))
    try:
        wait_reports(system, [victim, forger], running(victim))
        forged = replace(forger, native_id=victim.native_id)
        system.kill(forged)
        system.kill(forged, force=True)
        system.hold(forged)
        time.sleep(2)
        reports = system.get_statuses([victim, forger])
        assert reports[victim.job_id].state == JobState.RUNNING, reports
        assert not victim.exit_code_file.exists()
        # Without its record, the engine's job is still recognised by its tag at the scheduler.
        (victim.job_dir / records.NATIVE_ID_NAME).unlink()
        system.kill(victim)
        reports, _ = wait_reports(system, [victim], timeout=60)
        assert reports[victim.job_id].state == JobState.KILLED
    finally:
        for job in (victim, forger):
            system.kill(job, force=True)


def test_process_checks_are_real() -> None:
    """The liveness test used above sees a process die (so its "still alive" means something)."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    assert _alive(process.pid)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not _alive(process.pid)


# ---------------------------------------------------------------------- through the engine
def test_engine_ends_a_job_cancelled_at_the_scheduler_in_error_with_its_words(
        engine_factory: Callable[..., Any], tmp_path: Path) -> None:
    """The Status actor turns a ``killed`` report it did not ask for into ``error``, with the
    scheduler's words; a cancellation the client asked for stays ``killed``."""
    scheduler = FakeScheduler(tmp_path / "scheduler")
    bin_dir = scheduler.bin_dir("slurm")
    engine = engine_factory(f"[systems]\n[[batch]]\nclass = slurm\nbin_dir = {bin_dir}\n"
                            "status_interval = 0.3\n")
    operator, client = engine.submit("sleep", "300"), engine.submit("sleep", "300")
    engine.wait_for(lambda: all(engine.store.get(j)["state"] == "running"
                                for j in (operator, client)), what="both jobs running")
    _run(f"{bin_dir}/scancel", engine.store.get(operator)["native_id"])
    engine.store.request_cancel(client)
    by_operator, by_client = engine.wait_ended([operator, client], timeout=60)
    assert by_operator["state"] == "error", by_operator
    assert by_operator["status_message"].startswith(
        "killed by the execution system (Slurm state CANCELLED)"), by_operator
    assert by_client["state"] == "killed", by_client
    assert by_client["status_message"] == "killed on request"
