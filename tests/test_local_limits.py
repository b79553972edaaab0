"""The Local system enforces what a job asks (walltime, memory, cores) and records what it used.

Real daemons on a real mongod, real processes, real cgroups (the memory tests need root and a
memory controller the daemon can use; without, they are skipped with the reason), and the job
script run directly where the script itself is the subject (GNU time, the memory limit it could
not apply).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from execution_engine.jobscript import GNU_TIME, NO_LIMIT_EXIT, USAGE_ENV
from execution_engine.proc import process_start_time
from execution_engine.reasons import Reason
from execution_engine.states import JobState
from execution_engine.systems import local_limits, records
from execution_engine.systems.base import (
    USAGE_NAME,
    Resources,
    Usage,
    host_name,
    read_usage,
)
from execution_engine.systems.local import LocalSystem
from execution_engine.systems.local_launch import Launch
from execution_engine.systems.local_usage import parse_usage_line, usage_line
from tests.cluster_helpers import make_job, submit, wait_reports
from tests.conftest import Engine

PYTHON = sys.executable
CPUS = sorted(os.sched_getaffinity(0))


def local_engine(engine_factory: Callable[..., Engine], *, slots: int = 4,
                 kill_grace: float = 1, extra: str = "") -> Engine:
    return engine_factory(f"[systems]\n[[local]]\nclass = local\nslots = {slots}\n"
                          f"kill_grace = {kill_grace}\n{extra}")


def allocate(megabytes: int, then: str = "") -> list[str]:
    """A command that really touches ``megabytes`` MiB (a zero-filled buffer would not count)."""
    return [PYTHON, "-c", f"b = b'x' * ({megabytes} << 20); {then or 'pass'}"]


def group_exists(pgid: int) -> bool:
    """Whether a live process (not a zombie waiting for its parent) is in process group
    ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def memory_cgroups() -> local_limits.MemoryMethod:
    """The cgroup method a daemon started from here would use; skips the test without one."""
    method = local_limits.choose_memory_method("local", "auto", set_up=False)
    if os.geteuid() != 0 or not method.uses_cgroups:
        pytest.skip(f"no memory cgroup this process may use: {method.describe()}")
    return method


# ---------------------------------------------------------------------- walltime
def test_a_job_over_its_walltime_ends_walltime_exceeded_and_its_group_is_gone(
        engine_factory: Callable[..., Engine]) -> None:
    engine = local_engine(engine_factory)
    began = time.monotonic()
    job = engine.submit("sleep", "60", requirements={"walltime_s": 2})
    (doc,) = engine.wait_ended([job], timeout=30)
    took = time.monotonic() - began
    assert doc["state"] == "error", doc
    assert doc["reason"] == Reason.WALLTIME_EXCEEDED.value, doc
    assert doc["status_message"].startswith("walltime of 2 s exceeded"), doc["status_message"]
    assert doc["exit_code"] == 143  # the script let the TERM through and recorded the code
    assert took < 12, f"the walltime of 2 s was enforced after {took:.1f} s"
    pgid = int(doc["native_id"].split(":")[0])
    assert not group_exists(pgid), "the job's process group outlived its walltime"
    assert doc["usage"]["wall_s"] >= 2


def test_a_job_ignoring_term_is_killed_after_the_grace(
        engine_factory: Callable[..., Engine], tmp_path: Path) -> None:
    engine = local_engine(engine_factory, kill_grace=1)
    pidfile = tmp_path / "child.pid"
    job = engine.submit("sh", "-c", f"trap '' TERM; sleep 60 & echo $! >{pidfile}; wait",
                        requirements={"walltime_s": 1})
    (doc,) = engine.wait_ended([job], timeout=30)
    assert doc["state"] == "error", doc
    assert doc["reason"] == Reason.WALLTIME_EXCEEDED.value, doc
    assert doc["exit_code"] is None  # KILL: the script recorded nothing
    assert doc["usage"]["signal"] == "SIGKILL", doc["usage"]
    child = int(pidfile.read_text())
    engine.wait_for(lambda: process_start_time(child) is None or not group_exists(
        int(doc["native_id"].split(":")[0])), what="the TERM-proof child to be killed")


def test_a_job_within_its_walltime_finishes(engine_factory: Callable[..., Engine]) -> None:
    engine = local_engine(engine_factory)
    (doc,) = engine.wait_ended([engine.submit("sleep", "1", requirements={"walltime_s": 30})])
    assert doc["state"] == "finished", doc
    assert doc["reason"] == Reason.COMPLETED.value


def test_a_restarted_system_kills_what_an_earlier_one_terminated(tmp_path: Path) -> None:
    """The TERM is recorded in ``.execd/limit``: a new instance (a restarted Status actor)
    sends the KILL when the grace is over and reports the walltime."""
    options = {"state_dir": str(tmp_path / "state"), "slots": 2, "kill_grace": 1.0,
               "slot_wait": 0.5}
    first = LocalSystem("local", options)
    job = make_job(tmp_path, ["sh", "-c", "trap '' TERM; sleep 60"],
                   resources=Resources(walltime_s=1))
    job = submit(first, job)
    try:
        wait_reports(first, [job], lambda r: records.recorded_limit(
            job.job_dir, job.native_id) is not None, timeout=20, interval=0.2)
        first.close()
        second = LocalSystem("local", options)
        reports, _ = wait_reports(second, [job], timeout=20, interval=0.2)
        report = reports[job.job_id]
        assert report.state is JobState.ERROR, report
        assert report.reason == Reason.WALLTIME_EXCEEDED.value, report
        assert not group_exists(int(job.native_id.split(":")[0]))
        second.close()
    finally:
        pgid = int((job.native_id or "0:").split(":")[0])
        if pgid > 1 and group_exists(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_the_walltime_never_signals_a_process_the_engine_did_not_start(
        tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    system = LocalSystem("local", {"state_dir": str(tmp_path / "state"), "slots": 2,
                                   "kill_grace": 0.0, "slot_wait": 0.5})
    try:
        time.sleep(1.2)  # the bystander is now older than the walltime below
        forged = replace(make_job(tmp_path, ["true"], resources=Resources(walltime_s=1)),
                         native_id=f"{bystander.pid}:{process_start_time(bystander.pid)}")
        for _ in range(3):
            assert system.get_statuses([forged])[forged.job_id].state is JobState.RUNNING
        time.sleep(0.2)
        assert bystander.poll() is None, "a process the engine did not start was signalled"
        assert records.recorded_limit(forged.job_dir, forged.native_id) is None
    finally:
        system.close()


# ---------------------------------------------------------------------- memory
def test_a_job_over_its_memory_ends_memory_exceeded_and_one_under_finishes(
        engine_factory: Callable[..., Engine]) -> None:
    method = memory_cgroups()
    engine = local_engine(engine_factory)
    over = engine.submit(*allocate(300), requirements={"memory_mb": 100})
    under = engine.submit(*allocate(50), requirements={"memory_mb": 200})
    doc_over, doc_under = engine.wait_ended([over, under], timeout=60)
    assert doc_over["state"] == "error", doc_over
    assert doc_over["reason"] == Reason.MEMORY_EXCEEDED.value, doc_over
    assert doc_over["status_message"].startswith("memory limit of 100 MB exceeded"), doc_over
    assert doc_under["state"] == "finished", doc_under
    for job in (over, under):  # removed once the job ended
        cgroup = local_limits.job_cgroup(method, f"execd-{job}")
        assert cgroup is not None and not cgroup.exists(), cgroup


def test_a_job_joins_its_memory_cgroup_before_its_command_starts(
        engine_factory: Callable[..., Engine]) -> None:
    method = memory_cgroups()
    engine = local_engine(engine_factory)
    job = engine.submit("cat", "/proc/self/cgroup", requirements={"memory_mb": 64})
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "finished", doc
    expected = local_limits.job_cgroup(method, f"execd-{job}")
    assert expected is not None
    lines = Path(doc["job_dir"], "job.stdout").read_text().splitlines()
    suffix = f"/{expected.parent.parent.name}/{expected.parent.name}/{expected.name}"
    assert any(line.endswith(suffix) for line in lines), (suffix, lines)


def test_memory_with_ulimit_is_enforced_and_its_reason_comes_from_the_exit_code(
        engine_factory: Callable[..., Engine]) -> None:
    engine = local_engine(engine_factory, extra="memory_limit = ulimit\n")
    job = engine.submit(*allocate(300), requirements={"memory_mb": 100})
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "error", doc
    assert doc["exit_code"] == 1  # Python's MemoryError: the cause is not known to the engine
    assert doc["reason"] == Reason.NONZERO_EXIT.value
    assert "MemoryError" in Path(doc["job_dir"], "job.stderr").read_text()


def test_a_memory_limit_the_script_cannot_apply_stops_the_job(tmp_path: Path) -> None:
    job = make_job(tmp_path, ["sh", "-c", "echo ran"], resources=Resources(memory_mb=100))
    launch = Launch(cgroup=tmp_path / "no-such-cgroup")
    result = subprocess.run(launch.argv(job.script), env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == NO_LIMIT_EXIT
    assert "does not run without its memory limit" in result.stderr
    assert not (job.job_dir / "job.stdout").exists(), "the command ran without its limit"
    assert job.exit_code_file.read_text().strip() == str(NO_LIMIT_EXIT)
    system = LocalSystem("local", {"state_dir": str(tmp_path / "state"), "slots": 1,
                                   "kill_grace": 1.0, "slot_wait": 0.5})
    try:
        ended = replace(job, native_id="4194303:1")  # a pid that is not there
        reports, _ = wait_reports(system, [ended], timeout=20, interval=0.2)
    finally:
        system.close()
    report = reports[job.job_id]
    assert report.state is JobState.ERROR
    assert report.reason == Reason.INTERNAL_ERROR.value
    assert "cannot join the memory cgroup" in report.message, report


def test_leftover_job_cgroups_are_swept(tmp_path: Path) -> None:
    memory_cgroups()
    system = LocalSystem("sweep-test", {"state_dir": str(tmp_path / "state"), "slots": 1,
                                        "kill_grace": 1.0, "slot_wait": 0.5})
    method = system.memory_method
    leftover = local_limits.job_cgroup(method, "execd-leftover")
    young = local_limits.job_cgroup(method, "execd-young")
    assert leftover is not None and young is not None and method.root is not None
    try:
        leftover.mkdir()
        young.mkdir()
        try:
            os.utime(leftover, (time.time() - 3600, time.time() - 3600))
        except OSError as exc:
            pytest.skip(f"cannot age a cgroup here: {exc}")
        system.get_statuses([])
        assert not leftover.exists(), "a leftover cgroup was not swept"
        assert young.exists(), "a cgroup a job may be about to join was swept"
    finally:
        system.close()
        for path in (leftover, young, method.root):
            local_limits.remove_cgroup(path)


def test_systems_command_says_how_memory_is_limited(engine_factory: Callable[..., Engine]
                                                   ) -> None:
    engine = local_engine(engine_factory)
    expected = local_limits.choose_memory_method("local", "auto", set_up=False)
    out = engine.cli("systems").stdout
    line = next((x.strip() for x in out.splitlines() if "memory_mb:" in x), "")
    words = {"cgroup2": "cgroup v2", "cgroup1": "cgroup v1", "ulimit": "ulimit -v"}
    assert words[expected.kind] in line, out
    assert "walltime_s: TERM" in out and "cores:" in out, out


# ---------------------------------------------------------------------- exit codes
def test_a_missing_program_ends_command_not_found(engine_factory: Callable[..., Engine]
                                                  ) -> None:
    engine = local_engine(engine_factory)
    (doc,) = engine.wait_ended([engine.submit("/no/such/program")])
    assert doc["state"] == "error"
    assert doc["exit_code"] == 127
    assert doc["reason"] == Reason.COMMAND_NOT_FOUND.value


# ---------------------------------------------------------------------- cores
def affinity_command(seconds: float = 0) -> list[str]:
    """A job printing its CPUs, when it started and when it ended, as JSON."""
    return [PYTHON, "-c", "import json, os, time; start = time.time(); "
                          f"time.sleep({seconds}); print(json.dumps({{'cpus': "
                          "sorted(os.sched_getaffinity(0)), 'start': start, 'end': time.time()}))"]


def printed(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(Path(doc["job_dir"], "job.stdout").read_text()))


def printed_cpus(doc: dict[str, Any]) -> list[int]:
    return list(printed(doc)["cpus"])


def test_cores_take_as_many_slots_and_cpus(engine_factory: Callable[..., Engine]) -> None:
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    engine = local_engine(engine_factory, slots=2, extra="slot_wait = 0.1\n")
    wide = engine.submit(*affinity_command(4), requirements={"cores": 2})
    engine.wait_for(lambda: engine.store.get(wide)["state"] == "running", what="wide job")
    narrow = engine.submit(*affinity_command(), requirements={"cores": 1})
    time.sleep(2)
    assert "native_id" not in engine.store.get(narrow), \
        "a job started while a 2-core job held both slots"
    doc_wide, doc_narrow = engine.wait_ended([wide, narrow], timeout=60)
    assert doc_wide["state"] == doc_narrow["state"] == "finished"
    assert printed(doc_narrow)["start"] >= printed(doc_wide)["end"] - 0.05
    assert len(printed_cpus(doc_wide)) == 2
    assert len(printed_cpus(doc_narrow)) == 1


def test_one_core_jobs_running_together_get_different_cpus(
        engine_factory: Callable[..., Engine]) -> None:
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    engine = local_engine(engine_factory, slots=2)
    jobs = [engine.submit(*affinity_command(2), requirements={"cores": 1}) for _ in range(2)]
    docs = engine.wait_ended(jobs)
    cpus = [printed_cpus(doc) for doc in docs]
    assert all(len(c) == 1 for c in cpus), cpus
    assert cpus[0] != cpus[1], f"two one-core jobs shared a CPU: {cpus}"
    unpinned = engine.submit(*affinity_command())
    (doc,) = engine.wait_ended([unpinned])
    assert printed_cpus(doc) == CPUS, "a job that asks no cores was pinned"
    for pid in engine.actor_pids("submit-actor").get("submit-actor", []):
        for task in Path(f"/proc/{pid}/task").iterdir():
            assert sorted(os.sched_getaffinity(int(task.name))) == CPUS, \
                "the Submit actor kept a job's CPU affinity"


def test_more_cores_than_slots_is_rejected_at_submission(engine_factory: Callable[..., Engine]
                                                         ) -> None:
    engine = local_engine(engine_factory, slots=2)
    (doc,) = engine.wait_ended([engine.submit("true", requirements={"cores": 3})])
    assert doc["state"] == "error"
    assert doc["reason"] == Reason.REJECTED.value
    assert "asks for 3 cores" in doc["status_message"], doc["status_message"]
    assert "2 slots" in doc["status_message"], doc["status_message"]
    assert "native_id" not in doc


# ---------------------------------------------------------------------- usage
def test_usage_records_memory_cpu_wall_and_node(engine_factory: Callable[..., Engine]) -> None:
    engine = local_engine(engine_factory)
    big = engine.submit(*allocate(200))
    spin = engine.submit(PYTHON, "-c", "import time\nwhile time.process_time() < 2: pass")
    killed = engine.submit("sh", "-c", "kill -9 $$")
    doc_big, doc_spin, doc_killed = engine.wait_ended([big, spin, killed])
    assert doc_big["state"] == doc_spin["state"] == "finished"
    assert doc_big["usage"]["max_rss_mb"] >= 200, doc_big["usage"]
    assert doc_big["usage"]["max_rss_mb"] < 400, doc_big["usage"]
    assert 1.5 <= doc_spin["usage"]["cpu_s"] <= 3, doc_spin["usage"]
    assert doc_spin["usage"]["cpu_s"] - 0.5 <= doc_spin["usage"]["wall_s"] < 30, doc_spin["usage"]
    for doc in (doc_big, doc_spin, doc_killed):
        assert doc["usage"]["node"] == host_name()
    assert "signal" not in doc_spin["usage"]
    # The spinning interpreter stays below the Submit actor's own peak memory, which Linux
    # hands every process it spawns: no figure rather than the actor's.
    assert "max_rss_mb" not in doc_spin["usage"], doc_spin["usage"]
    assert doc_killed["exit_code"] == 137
    assert doc_killed["usage"]["signal"] == "SIGKILL"


def rusage(maxrss_kb: int) -> resource.struct_rusage:
    return resource.struct_rusage((0.5, 0.25, maxrss_kb) + (0,) * 13)


def test_a_usage_line_gives_a_peak_memory_only_above_its_starters() -> None:
    killed = int(signal.SIGKILL)  # the wait status of a process ended by SIGKILL
    below = parse_usage_line(usage_line("12:34", killed, rusage(40_000), 1.5,
                                        starter_maxrss_kb=42_000))
    assert below == ("12:34", Usage(wall_s=1.5, cpu_s=0.75, signal="SIGKILL"))
    above = parse_usage_line(usage_line("12:34", 0, rusage(300_000), 1.5,
                                        starter_maxrss_kb=42_000))
    assert above == ("12:34", Usage(wall_s=1.5, cpu_s=0.75, max_rss_mb=293.0))


@pytest.mark.skipif(not os.access(GNU_TIME, os.X_OK), reason=f"no {GNU_TIME}")
@pytest.mark.parametrize("system_records", [False, True])
def test_the_job_script_records_usage_with_gnu_time_unless_the_system_does(
        tmp_path: Path, system_records: bool) -> None:
    """The same exit codes on both paths; GNU time's record only where the system does not
    record usage itself (``EXECD_USAGE``, set by Local)."""
    env = {"PATH": "/usr/bin:/bin"} | ({USAGE_ENV: "local"} if system_records else {})
    cases = {0: allocate(60), 3: ["sh", "-c", "exit 3"], 127: ["/no/such/program"],
             137: ["sh", "-c", "kill -9 $$"]}
    for code, command in cases.items():
        job = make_job(tmp_path, command)
        result = subprocess.run(["/bin/sh", str(job.script)], env=env, capture_output=True,
                                timeout=60, check=False)
        assert result.returncode == code, (command, result)
        assert job.exit_code_file.read_text().strip() == str(code)
        usage = read_usage(job)
        if system_records:
            assert not (job.job_dir / USAGE_NAME).exists()
        elif code == 0:
            assert usage is not None and usage.max_rss_mb is not None, usage
            assert usage.max_rss_mb >= 60, usage
            assert usage.cpu_s is not None and usage.wall_s is not None
        if code == 0:
            stdout = (job.job_dir / "job.stdout")
            assert stdout.exists() and not stdout.read_bytes()
