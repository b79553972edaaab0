"""Fast tests of the cluster systems without a cluster: command builders, output parsers, state
tables, the error contract of the command-line template (with stand-in scheduler commands), and
the DRMAA base's environment and lazy loading."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from execution_engine.config import SystemSection
from execution_engine.errors import ConfigError, SubmissionRejected, SystemUnavailable
from execution_engine.plugins import system_options
from execution_engine.states import JobState
from execution_engine.systems import accounting, drmaa_base, ogs, slurm, torque
from execution_engine.systems.base import PID_NAME, USAGE_NAME, ExecutionSystem, Resources, Usage
from execution_engine.systems.batch import (
    forgotten_id,
    looks_transient,
    run_command,
)
from execution_engine.systems.ogs import OgsSystem
from execution_engine.systems.records import record_kill, record_native_id
from execution_engine.systems.slurm import SlurmSystem
from execution_engine.systems.torque import PbsDrmaaSystem, TorqueCliSystem, TorqueSystem
from tests.cluster_helpers import make_job

ROOT = Path(__file__).resolve().parent.parent


def options(cls: type[ExecutionSystem], state_dir: Path, **raw: str) -> dict[str, object]:
    """The checked options of a config section, as the registry gives them."""
    return system_options(cls, SystemSection("test", cls.kind, raw), state_dir)


# ---------------------------------------------------------------------- registration, options
def test_builtins_register_the_cluster_systems() -> None:
    from execution_engine import builtins

    kinds = {cls.kind for cls in builtins.execd_execution_systems()}
    assert {"local", "ogs", "torque", "slurm"} <= kinds


@pytest.mark.parametrize("cls", [OgsSystem, TorqueSystem, SlurmSystem])
def test_option_specs_give_defaults(cls: type[ExecutionSystem], tmp_path: Path) -> None:
    opts = options(cls, tmp_path)
    assert set(cls.option_spec) <= set(opts)


def test_bad_option_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[systems\]\[test\] mode"):
        options(TorqueSystem, tmp_path, mode="ssh")


def test_importing_the_systems_does_not_load_drmaa() -> None:
    code = ("import sys, execution_engine.builtins, execution_engine.systems.ogs, "
            "execution_engine.systems.torque; "
            "from execution_engine.systems.ogs import OgsSystem; "
            "OgsSystem('g', {}); "
            "assert 'drmaa' not in sys.modules, 'drmaa imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "GLIBC_TUNABLES": "", "DRMAA_LIBRARY_PATH": "/nonexistent"})


# ---------------------------------------------------------------------- DRMAA base
def test_drmaa_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setenv("SGE_ROOT", "/from/env")
    monkeypatch.delenv("SGE_CELL", raising=False)
    monkeypatch.delenv("DRMAA_LIBRARY_PATH", raising=False)
    env = drmaa_base.drmaa_process_environment({"library": "/lib/libdrmaa.so", "sge_cell": "c"})
    assert env == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.rtld.optional_static_tls=16384",
        "DRMAA_LIBRARY_PATH": "/lib/libdrmaa.so",
        "SGE_ROOT": "/from/env",
        "SGE_CELL": "c",
    }
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
    assert drmaa_base.drmaa_process_environment({})["GLIBC_TUNABLES"] == env["GLIBC_TUNABLES"]


def test_process_environment_per_system() -> None:
    assert "GLIBC_TUNABLES" in OgsSystem.process_environment({})
    assert "GLIBC_TUNABLES" in TorqueSystem.process_environment({"mode": "drmaa"})
    assert TorqueSystem.process_environment({"mode": "cli"}) == {}
    assert SlurmSystem.process_environment({}) == {}


def test_library_that_cannot_load_is_unavailable_with_the_reason() -> None:
    code = textwrap.dedent("""
        from execution_engine.errors import SystemUnavailable
        from execution_engine.systems.drmaa_base import load_drmaa
        try:
            load_drmaa("/nonexistent/libdrmaa.so", "grid")
        except SystemUnavailable as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "GLIBC_TUNABLES": ""}).stdout
    assert "cannot load the DRMAA library /nonexistent/libdrmaa.so" in out
    assert "GLIBC_TUNABLES" in out


def test_drmaa_message_drops_the_code_prefix() -> None:
    said = 'Job was rejected because job requests unknown queue "x"'
    assert drmaa_base.drmaa_message(Exception(f"code 17: {said}")) == said


def test_drmaa_states_cover_drmaa_1() -> None:
    assert set(drmaa_base.DRMAA_STATES) == {
        "undetermined", "queued_active", "system_on_hold", "user_on_hold",
        "user_system_on_hold", "running", "system_suspended", "user_suspended",
        "user_system_suspended", "done", "failed"}
    assert drmaa_base.DRMAA_STATES["undetermined"] is None
    assert drmaa_base.DRMAA_STATES["user_suspended"] == JobState.HOLD


# ---------------------------------------------------------------------- Grid Engine
def test_sge_resource_arguments(tmp_path: Path) -> None:
    job = make_job(tmp_path, ["true"], resources=Resources(cores=4, memory_mb=1000,
                                                           walltime_s=3600, queue="all.q"))
    assert ogs.sge_resource_arguments(job, system="g") == [
        "-q", "all.q", "-pe", "smp", "4", "-l", "h_vmem=250M,h_rt=3600"]
    one = make_job(tmp_path, ["true"], resources=Resources(cores=1, memory_mb=100))
    assert ogs.sge_resource_arguments(one, system="g", default_queue="long.q",
                                      memory_resource="mem_free") == [
        "-q", "long.q", "-l", "mem_free=100M"]


def test_queue_that_looks_like_an_option_is_rejected(tmp_path: Path) -> None:
    job = make_job(tmp_path, ["true"], resources=Resources(queue="all.q -l exclusive"))
    with pytest.raises(SubmissionRejected, match="invalid queue name"):
        ogs.sge_resource_arguments(job, system="g")
    with pytest.raises(SubmissionRejected, match="invalid partition name"):
        slurm.resource_arguments(replace(job, resources=Resources(queue="-p")))


def test_ogs_native_specification_adds_the_sites(tmp_path: Path) -> None:
    system = OgsSystem("g", {"native_specification": "-P myproject", "queue": "all.q"})
    job = make_job(tmp_path, ["true"], resources=Resources(walltime_s=60))
    assert system.native_specification(job) == "-q all.q -l h_rt=60 -P myproject"


def test_parse_qstat_xml() -> None:
    text = textwrap.dedent("""\
        <?xml version='1.0'?>
        <job_info>
          <queue_info>
            <job_list state="running"><JB_job_number>12</JB_job_number>
              <JB_name>execd-abc</JB_name><state>r</state></job_list>
          </queue_info>
          <job_info>
            <job_list state="pending"><JB_job_number>13</JB_job_number>
              <JB_name>other</JB_name><state>hqw</state></job_list>
          </job_info>
        </job_info>""")
    assert ogs.parse_qstat_xml(text) == {"12": "execd-abc", "13": "other"}
    assert ogs.parse_qstat_xml("") == {}


def test_parse_qacct_numbers() -> None:
    text = "=====\nqname all.q\njobname execd-x\njobnumber    17   \n=====\njobnumber 21\n"
    assert ogs.parse_qacct_numbers(text) == ["17", "21"]


# ---------------------------------------------------------------------- Slurm
def test_slurm_submit_command(tmp_path: Path) -> None:
    system = SlurmSystem("s", {"queue": "debug", "submit_options": "--account 'a b'"})
    job = make_job(tmp_path, ["true"], resources=Resources(cores=2, memory_mb=512,
                                                           walltime_s=90061))
    assert system.submit_command(job) == [
        "sbatch", "--parsable", "-J", job.tag, "-o", str(job.scheduler_log), "-D",
        str(job.job_dir), "--export=NONE", "--partition=debug", "--cpus-per-task=2",
        "--mem=512M", "--time=1-01:01:01", "--account", "a b", str(job.script)]


def test_slurm_status_command_asks_all_jobs_at_once() -> None:
    system = SlurmSystem("s", {"bin_dir": "/opt/slurm/bin"})
    assert system.status_command(["1", "2", "3"]) == [
        "/opt/slurm/bin/squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%S|%e|%N", "-j", "1,2,3"]


def test_parse_sbatch_output() -> None:
    assert slurm.parse_sbatch_output("123\n") == "123"
    assert slurm.parse_sbatch_output("123;cluster\n") == "123"
    assert slurm.parse_sbatch_output("sbatch: warning: x\n456\n") == "456"
    assert slurm.parse_sbatch_output("") is None


def test_parse_squeue_output() -> None:
    out = "1|RUNNING|None\n2|PENDING|Resources\n3|PENDING|JobHeldUser\n4|COMPLETED|None\n\n"
    states = slurm.parse_squeue_output(out)
    assert states == {"1": "RUNNING", "2": "PENDING", "3": "PENDING(held)", "4": "COMPLETED"}
    system = SlurmSystem("s", {})
    assert [system.engine_state(s, i) for i, s in states.items()] == [
        JobState.RUNNING, JobState.PENDING, JobState.HOLD, JobState.FINISHED]


def test_parse_sacct_records() -> None:
    # sacct (slurmdbd) words: "CANCELLED by 0", job steps; a requeued job's later line wins.
    out = ("7|execd-a|CANCELLED by 0|0:15|2026-12-01T10:00:00|2026-12-01T10:00:05|00:00:05|"
           "n[1-2]\n7.batch|batch|CANCELLED|0:15|2026-12-01T10:00:00|2026-12-01T10:00:05|"
           "00:00:05|n1\n8|b|NODE_FAIL|0:0|2026-12-01T10:00:00|Unknown|00:01:00|n3\n"
           "8|b|COMPLETED|0:0|2026-12-01T10:02:00|2026-12-01T10:02:01|00:00:01|n3\n"
           "9|c|CANCELLED|0:0|None|2026-12-01T10:03:00|00:00:00|None assigned\n")
    records = accounting.parse_sacct_records(out)
    assert sorted(records) == ["7", "8", "9"]
    assert (records["7"].name, records["7"].state, records["7"].exit_code) == (
        "execd-a", "CANCELLED", "0:15")
    assert (records["7"].wall_s, records["7"].nodes) == (5.0, "n[1-2]")
    assert records["8"].state == "COMPLETED"
    assert (records["9"].wall_s, records["9"].nodes) == (0.0, None)
    assert records["9"].evidence().usage == Usage(wall_s=0.0)


def test_slurm_durations_and_time_stamps() -> None:
    assert accounting.slurm_duration("00:01:26") == 86
    assert accounting.slurm_duration("1-02:03:04") == 93784
    assert accounting.slurm_duration("0:01") == 1
    assert accounting.slurm_duration("INVALID") is None
    assert accounting.slurm_timestamp("N/A") is None
    assert accounting.slurm_timestamp("Unknown") is None
    assert accounting.slurm_timestamp("2026-12-01T10:04:33") is not None


def test_unknown_native_state_is_unknown_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    system = SlurmSystem("s", {})
    with caplog.at_level(logging.WARNING):
        assert system.engine_state("WEIRD", "9") is None
    assert "unknown Slurm state 'WEIRD'" in caplog.text


# ---------------------------------------------------------------------- Torque
WRAPPER_QSTAT = "Job Id:\t33\n\tJob_Name = execd-x1\n\tjob_state = R\n\nJob Id:\t34\n" \
                "\tJob_Name = execd-x2\n\tjob_state = C\n"
TORQUE_QSTAT = textwrap.dedent("""\
    Job Id: 12.server.example.org
        Job_Name = execd-abc
        job_state = H
        Variable_List = PBS_O_HOME=/root,PBS_O_LANG=C,
    \tPBS_O_PATH=/usr/bin
    """)


def test_parse_qstat_full() -> None:
    assert torque.parse_qstat_full(WRAPPER_QSTAT) == {
        "33": {"Job_Name": "execd-x1", "job_state": "R"},
        "34": {"Job_Name": "execd-x2", "job_state": "C"}}
    parsed = torque.parse_qstat_full(TORQUE_QSTAT)
    assert parsed["12.server.example.org"]["job_state"] == "H"
    assert parsed["12.server.example.org"]["Variable_List"].endswith("PBS_O_PATH=/usr/bin")


def test_torque_commands(tmp_path: Path) -> None:
    system = TorqueCliSystem("t", {"bin_dir": "/opt/t/bin", "queue": "batch"})
    job = make_job(tmp_path, ["true"], resources=Resources(cores=2, memory_mb=100,
                                                           walltime_s=3700))
    argv = system.submit_command(job)
    assert argv == ["/opt/t/bin/qsub", "-N", job.tag, "-o", str(job.scheduler_log), "-j", "oe",
                    "-w", str(job.job_dir), "-q", "batch",
                    "-l", "nodes=1:ppn=2,mem=100mb,walltime=01:01:40", str(job.script)]
    assert "-d" not in argv
    assert system.status_command(["1", "2"]) == ["/opt/t/bin/qstat", "-f", "1", "2"]


def test_torque_job_ids_match_across_server_names() -> None:
    system = TorqueCliSystem("t", {})
    assert system.same_job("12.server.example.org", "12.server")
    assert not system.same_job("120.server", "12.server")
    assert torque.parse_qsub_output("12.server\n") == "12.server"
    assert torque.parse_qsub_output("qsub: error\n") is None


def test_torque_find_picks_the_tag(tmp_path: Path) -> None:
    job = make_job(tmp_path, ["true"])
    out = WRAPPER_QSTAT + f"\nJob Id:\t35\n\tJob_Name = {job.tag}\n\tjob_state = Q\n"
    assert TorqueCliSystem("t", {}).parse_find_output(out, job) == "35"


def test_torque_drmaa_mode_builds_on_the_drmaa_base(tmp_path: Path) -> None:
    system = TorqueSystem("t", options(TorqueSystem, tmp_path, mode="drmaa", queue="batch",
                                       library="/usr/lib/pbs-drmaa/libdrmaa.so",
                                       native_specification="-A acct"))
    assert isinstance(system.backend, PbsDrmaaSystem)
    job = make_job(tmp_path, ["true"], resources=Resources(cores=4))
    assert system.backend.native_specification(job) == "-q batch -l nodes=1:ppn=4 -A acct"
    assert system.backend.library == "/usr/lib/pbs-drmaa/libdrmaa.so"
    assert system.status_calls == 0
    system.close()  # no session was opened, nothing was loaded


# ---------------------------------------------------------------------- the command template
def test_run_command_never_uses_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run_command(["echo", f"x; touch {marker}"], system="t", timeout=10)
    assert result.stdout == f"x; touch {marker}\n"
    assert not marker.exists()


def test_run_command_timeout_is_unavailable() -> None:
    with pytest.raises(SystemUnavailable, match=r"did not answer within 0\.5 s"):
        run_command(["sleep", "30"], system="t", timeout=0.5)


def test_missing_command_is_unavailable() -> None:
    with pytest.raises(SystemUnavailable, match="cannot run /nonexistent/qsub"):
        run_command(["/nonexistent/qsub"], system="t", timeout=5)


def test_transient_markers() -> None:
    assert looks_transient("sbatch: error: Batch job submission failed: Unable to contact "
                           "slurm controller (connect failure)")
    assert looks_transient('error: unable to send message to qmaster using port 6444')
    assert not looks_transient("sbatch: error: Batch job submission failed: Invalid partition "
                               "name specified")


def fake_commands(bin_dir: Path, **scripts: str) -> Path:
    """Stand-in scheduler commands: ``name=shell body``."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def test_refusal_is_rejected_with_the_schedulers_message(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", sbatch=(
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' "
        ">&2; exit 1"))
    system = SlurmSystem("s", {"bin_dir": str(bin_dir)})
    with pytest.raises(SubmissionRejected, match="Slurm refused the job: sbatch: error: Batch "
                                                 "job submission failed: Invalid partition"):
        system.run(make_job(tmp_path, ["true"]))


def test_unreachable_controller_is_unavailable(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", sbatch=(
        "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller "
        "(connect failure)' >&2; exit 1"), squeue="echo 'slurm_load_jobs error: Unable to "
        "contact slurm controller (connect failure)' >&2; exit 1")
    system = SlurmSystem("s", {"bin_dir": str(bin_dir)})
    job = make_job(tmp_path, ["true"])
    with pytest.raises(SystemUnavailable):
        system.run(job)
    with pytest.raises(SystemUnavailable, match="Unable to contact"):
        system.get_statuses([replace(job, native_id="5")])


def test_submission_that_timed_out_but_got_through_is_not_repeated(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", sbatch="sleep 10", squeue="echo 77")
    system = SlurmSystem("s", {"bin_dir": str(bin_dir), "command_timeout": 1})
    assert system.run(make_job(tmp_path, ["true"])).native_id == "77"


def test_statuses_in_one_command(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    bin_dir = fake_commands(tmp_path / "bin", squeue=(
        f'echo "$@" >>{calls}\nprintf "1|RUNNING|None\\n2|PENDING|JobHeldAdmin\\n'
        f'3|COMPLETED|None\\n4|BOGUS|None\\n"'), sacct="exit 1")
    system = SlurmSystem("s", {"bin_dir": str(bin_dir)})
    jobs = [replace(make_job(tmp_path, ["true"]), native_id=str(i)) for i in range(1, 7)]
    jobs[2].exit_code_file.write_text("0\n")
    jobs[4].exit_code_file.write_text("5\n")  # gone from squeue, exit code recorded
    # jobs[5] gone from squeue, no exit code: ended without one
    reports = system.get_statuses(jobs)
    assert [reports[j.job_id].state for j in jobs] == [
        JobState.RUNNING, JobState.HOLD, JobState.FINISHED, None, JobState.ERROR, JobState.ERROR]
    assert reports[jobs[3].job_id].message == "unknown Slurm state 'BOGUS'"
    assert reports[jobs[4].job_id].exit_code == 5
    assert "without recording an exit code" in reports[jobs[5].job_id].message
    assert calls.read_text().count("\n") == 1
    assert system.status_calls == 1
    assert system.status_commands == 2  # squeue, and sacct for the one without an exit code


def test_exit_code_recorded_while_the_scheduler_says_running(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", qstat="printf 'Job Id:\\t1\\n\\tjob_state = R\\n'")
    system = TorqueCliSystem("t", {"bin_dir": str(bin_dir)})
    job = replace(make_job(tmp_path, ["true"]), native_id="1")
    job.exit_code_file.write_text("0\n")
    assert system.get_statuses([job])[job.job_id].state == JobState.FINISHED


def test_qstat_153_means_unknown_ids_not_an_outage(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", qstat="exit 153")
    system = TorqueCliSystem("t", {"bin_dir": str(bin_dir)})
    job = replace(make_job(tmp_path, ["true"]), native_id="1")
    job.exit_code_file.write_text("2\n")
    report = system.get_statuses([job])[job.job_id]
    assert (report.state, report.exit_code) == (JobState.ERROR, 2)
    fake_commands(bin_dir, qstat="echo 'Problem loading jobs.' >&2; exit 8")
    with pytest.raises(SystemUnavailable, match="Problem loading jobs"):
        system.get_statuses([job])


def test_kill_of_an_ended_job_is_not_an_error(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", qdel="exit 1")
    system = TorqueCliSystem("t", {"bin_dir": str(bin_dir)})
    job = replace(make_job(tmp_path, ["true"]), native_id="1")
    record_native_id(job.job_dir, "1")  # as run() records it
    system.kill(job)


def test_job_that_ran_but_is_forgotten_is_never_resubmitted(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", squeue="true", sacct="true")
    system = SlurmSystem("s", {"bin_dir": str(bin_dir)})
    job = make_job(tmp_path, ["true"])
    assert system.find(job) is None  # never ran: may be submitted
    (job.job_dir / PID_NAME).write_text("123\n")
    job.exit_code_file.write_text("0\n")
    assert system.find(job) == forgotten_id(job)
    report = system.get_statuses([replace(job, native_id=forgotten_id(job))])[job.job_id]
    assert report.state == JobState.FINISHED


def test_status_of_very_many_jobs_is_still_one_command() -> None:
    ids = [str(10**7 + i) for i in range(20_000)]  # 160 kB of ids: more than one argument holds
    argv = SlurmSystem("s", {}).status_command(ids)
    assert "--me" in argv
    assert "-j" not in argv
    assert SlurmSystem("s", {}).status_command(ids[:10])[-2:] == ["-j", ",".join(ids[:10])]


def test_missing_accounting_command_is_not_an_outage(tmp_path: Path) -> None:
    bin_dir = fake_commands(tmp_path / "bin", squeue="true")  # no sacct in bin_dir
    system = SlurmSystem("s", {"bin_dir": str(bin_dir)})
    job = replace(make_job(tmp_path, ["true"]), native_id="3")
    report = system.get_statuses([job])[job.job_id]
    assert report.state == JobState.ERROR
    assert "no longer known to Slurm" in report.message


# ---------------------------------------------------------------------- why jobs ended
# Outputs recorded on the provisioned Slurm 22.05 cluster: a job of --time=1 running `sleep 600`
# (squeue while running, then after Slurm ended it; its line in `sacct -c`), and a job that
# exited 3. Slurm there has no cgroups (task/none) and cannot enforce memory: the other end
# states are the recorded TIMEOUT lines with the state Slurm writes instead.
SQUEUE_RUNNING = "4|RUNNING|None|2026-12-01T10:04:33|2026-12-01T10:05:33|vm\n"
SQUEUE_TIMEOUT = "4|TIMEOUT|TimeLimit|2026-12-01T10:04:33|2026-12-01T10:05:59|vm\n"
SQUEUE_PENDING = "4|PENDING|None|N/A|N/A|\n"
SACCT_TIMEOUT = "4|exp_timeout|TIMEOUT|0:0|2026-12-01T10:04:33|2026-12-01T10:05:59|00:01:26|vm\n"
SACCT_FAILED = "3|t.sh|FAILED|3:0|2026-12-01T09:58:28|2026-12-01T09:58:29|00:00:01|vm\n"


def squeue_says(tmp_path: Path, line: str, *, sacct: str = "exit 1") -> SlurmSystem:
    bin_dir = fake_commands(tmp_path / "bin", squeue=f"printf '%s' '{line}'", sacct=sacct)
    return SlurmSystem("s", {"bin_dir": str(bin_dir)})


@pytest.mark.parametrize(("state", "reason"), [
    ("TIMEOUT", "walltime_exceeded"), ("DEADLINE", "walltime_exceeded"),
    ("OUT_OF_MEMORY", "memory_exceeded"), ("NODE_FAIL", "node_failure"),
    ("BOOT_FAIL", "node_failure"), ("PREEMPTED", "preempted"),
    ("CANCELLED", "killed_by_system"), ("FAILED", None), ("COMPLETED", None)])
def test_slurm_end_states_say_why(tmp_path: Path, state: str, reason: str | None) -> None:
    system = squeue_says(tmp_path, SQUEUE_TIMEOUT.replace("TIMEOUT", state, 1))
    job = replace(make_job(tmp_path, ["sleep", "600"]), native_id="4")
    job.exit_code_file.write_text("143\n")  # the TERM Slurm sends first reached the command
    report = system.get_statuses([job])[job.job_id]
    assert report.reason == reason
    assert report.state == (JobState.KILLED if state == "CANCELLED" else JobState.ERROR)
    assert report.usage == Usage(wall_s=86.0, node="vm")
    assert f"(Slurm state {state})" in report.message or state == "COMPLETED"


def test_slurm_running_and_pending_jobs_carry_no_cause(tmp_path: Path) -> None:
    job = replace(make_job(tmp_path, ["sleep", "600"]), native_id="4")
    for line, state in ((SQUEUE_RUNNING, JobState.RUNNING), (SQUEUE_PENDING, JobState.PENDING)):
        report = squeue_says(tmp_path, line).get_statuses([job])[job.job_id]
        assert (report.state, report.reason, report.usage) == (state, None, None)


def test_slurm_completed_job_is_finished_whatever_its_state(tmp_path: Path) -> None:
    system = squeue_says(tmp_path, SQUEUE_TIMEOUT)
    job = replace(make_job(tmp_path, ["true"]), native_id="4")
    job.exit_code_file.write_text("0\n")  # it completed as the limit came
    report = system.get_statuses([job])[job.job_id]
    assert (report.state, report.reason) == (JobState.FINISHED, None)


def test_a_job_ended_before_slurm_noticed_keeps_its_node_not_slurms_forecast_end(
        tmp_path: Path) -> None:
    """The script recorded exit 0 while squeue still says RUNNING (its end column then is the
    time limit's forecast): finished at once, on squeue's node, with the wall time the job
    itself recorded (GNU time), never start-to-forecast."""
    system = squeue_says(tmp_path, SQUEUE_RUNNING)
    job = replace(make_job(tmp_path, ["true"]), native_id="4")
    job.exit_code_file.write_text("0\n")
    (job.job_dir / USAGE_NAME).write_text("wall=1.50\nuser=0.20\nsys=0.10\nmaxrss_kb=2048\n")
    report = system.get_statuses([job])[job.job_id]
    assert report.state is JobState.FINISHED
    assert report.usage == Usage(wall_s=1.5, cpu_s=0.3, max_rss_mb=2.0, node="vm")


def test_jobs_squeue_forgot_are_explained_by_one_jobcomp_call(tmp_path: Path) -> None:
    calls = tmp_path / "sacct.calls"
    system = squeue_says(tmp_path, "", sacct=(
        f'echo "$@" >>{calls}\nprintf "%s" "{SACCT_TIMEOUT}{SACCT_FAILED}"'))
    timed_out = replace(make_job(tmp_path, ["sleep", "600"]), native_id="4")
    timed_out.exit_code_file.write_text("143\n")
    failed = replace(make_job(tmp_path, ["sh", "-c", "exit 3"]), native_id="3")
    failed.exit_code_file.write_text("3\n")
    lost = replace(make_job(tmp_path, ["true"]), native_id="5")  # no record, no exit code
    reports = system.get_statuses([timed_out, failed, lost])
    assert calls.read_text().split() == ["-c", "-n", "-P", "-o", ",".join(
        accounting.SACCT_FIELDS), "-j", "4,3,5"]  # one call for all of them
    assert system.status_commands == 2  # squeue, then sacct
    report = reports[timed_out.job_id]
    assert (report.state, report.exit_code, report.reason) == (
        JobState.ERROR, 143, "walltime_exceeded")
    assert "Slurm accounting: state TIMEOUT" in report.message
    assert report.usage == Usage(wall_s=86.0, node="vm")
    report = reports[failed.job_id]
    assert (report.state, report.exit_code, report.reason) == (JobState.ERROR, 3, None)
    assert report.usage == Usage(wall_s=1.0, node="vm")
    report = reports[lost.job_id]  # its absence does not show that Slurm lost it
    assert (report.state, report.reason) == (JobState.ERROR, None)
    assert report.message.endswith("(no longer known to Slurm, nor to its accounting)")


@pytest.mark.parametrize("said", [
    "echo 'Slurm job completion is disabled' >&2; exit 1",  # JobCompType=jobcomp/none
    "echo 'sacct: fatal: open /var/log/slurm/jobcomp.log: No such file or directory' >&2; "
    "exit 1",  # the jobcomp file is missing
    "sleep 30"])  # sacct hangs
def test_jobcomp_that_cannot_answer_leaves_the_cause_unknown(tmp_path: Path, said: str) -> None:
    system = squeue_says(tmp_path, "", sacct=said)
    system.command_timeout = 1
    job = replace(make_job(tmp_path, ["sleep", "600"]), native_id="4")
    report = system.get_statuses([job])[job.job_id]  # the cycle does not fail
    assert (report.state, report.reason) == (JobState.ERROR, None)
    assert report.message == ("the job ended without recording an exit code (killed by the "
                              "system?) (no longer known to Slurm)")


def test_slurm_accounting_none_asks_nothing(tmp_path: Path) -> None:
    calls = tmp_path / "sacct.calls"
    bin_dir = fake_commands(tmp_path / "bin", squeue="true", sacct=f"echo x >>{calls}")
    system = SlurmSystem("s", {"bin_dir": str(bin_dir), "accounting": "none"})
    job = replace(make_job(tmp_path, ["true"]), native_id="4")
    assert system.get_statuses([job])[job.job_id].reason is None
    assert not calls.exists()
    assert system.status_commands == 1


# Grid Engine 8.1.9 accounting records of the provisioned cell: h_rt=5 running `sleep 600`;
# h_vmem=100M with three processes of 60 MB (killed by the execd); `qdel` of a running job; a job
# killing itself with SIGKILL; a program failing its own allocation under h_vmem=100M (exit 1).
GE_HRT = ("all.q:vm:root:root:exp_hrt:2:sge:0:1796118916:1796118916:1796118922:37:137:6:0.009910:"
          "0.005161:4440.000000:0:0:0:0:496:2:0:168.000000:8:0:0:0:19:7:NONE:defaultdepartment:"
          "NONE:1:0:0.015071:0.000000:0.000033:-l h_rt=5:0.000000:NONE:3366912.000000:0:0")
GE_VMEM = ("all.q:vm:root:root:exp_multi:5:sge:0:1796118954:1796118954:1796118955:37:137:1:"
           "0.003872:0.010248:4636.000000:0:0:0:0:529:0:0:8.000000:8:0:0:0:12:1:NONE:"
           "defaultdepartment:NONE:1:0:0.230000:0.007294:0.000151:-l h_vmem=100M:0.000000:NONE:"
           "215269376.000000:0:0")
GE_QDEL = ("all.q:vm:root:root:exp_qdel:8:sge:0:1796119142:1796119143:1796119147:100:137:4:"
           "0.003633:0.007148:4492.000000:0:0:0:0:557:0:0:16.000000:24:0:0:0:16:12:NONE:"
           "defaultdepartment:NONE:1:0:0.010781:0.000000:0.000033:NONE:0.000000:NONE:"
           "3219456.000000:0:0")
GE_SELF_KILL = ("all.q:vm:root:root:exp_self:9:sge:0:1796119160:1796119160:1796119161:0:137:1:"
                "0.001:0.002:4400.000000:0:0:0:0:500:0:0:0.000000:8:0:0:0:10:1:NONE:"
                "defaultdepartment:NONE:1:0:0.003:0.000000:0.000000:NONE:0.000000:NONE:"
                "3200000.000000:0:0")
GE_OWN_FAILURE = ("all.q:vm:root:root:exp_vmem2:4:sge:0:1796118916:1796118916:1796118918:0:1:2:"
                  "0.018034:0.088951:89804.000000:0:0:0:0:21823:0:0:0.000000:24:0:0:0:22:11:"
                  "NONE:defaultdepartment:NONE:1:0:0.106985:0.000932:0.000070:-l h_vmem=100M:"
                  "0.000000:NONE:51920896.000000:0:0")


def test_parse_accounting_line() -> None:
    record = accounting.parse_accounting_line(GE_HRT)
    assert record == accounting.JobEndRecord(
        job_number="2", job_name="exp_hrt", hostname="vm", failed=37, exit_status=137,
        signal="SIGKILL", wall_s=6.0, cpu_s=0.015071, maxvmem_mb=3.2, maxrss_mb=4.3,
        end_time=1796118922.0)
    assert record.usage() == Usage(wall_s=6.0, cpu_s=0.015071, max_rss_mb=4.3,
                                   signal="SIGKILL", node="vm")
    assert accounting.parse_accounting_line("# Version: 8.1.9") is None
    assert accounting.parse_accounting_line("all.q:vm:short") is None


@pytest.mark.parametrize(("line", "resources", "reason"), [
    (GE_HRT, Resources(walltime_s=5), "walltime_exceeded"),
    (GE_HRT, Resources(walltime_s=5, memory_mb=100), "walltime_exceeded"),
    (GE_HRT, Resources(), "killed_by_system"),  # a limit it did not ask for (h_cpu, site's)
    (GE_VMEM, Resources(memory_mb=100), "memory_exceeded"),
    (GE_VMEM, Resources(memory_mb=100, walltime_s=3600), "memory_exceeded"),
    (GE_VMEM, Resources(memory_mb=100, walltime_s=1), "killed_by_system"),  # both: either
    (GE_QDEL, Resources(walltime_s=3600), "killed_by_system"),
    (GE_SELF_KILL, Resources(walltime_s=3600), None),  # its own signal
    (GE_SELF_KILL, Resources(walltime_s=1), "walltime_exceeded"),  # a signal at its limit
    (GE_OWN_FAILURE, Resources(memory_mb=100), None)])  # malloc refused: exit 1, its own code
def test_grid_engine_causes(line: str, resources: Resources, reason: str | None) -> None:
    record = accounting.parse_accounting_line(line)
    assert record is not None
    evidence = accounting.job_end_evidence(record, resources, source="Grid Engine accounting")
    assert evidence.reason == reason


def test_grid_engine_memory_is_judged_only_where_enforced() -> None:
    record = accounting.parse_accounting_line(GE_VMEM)
    assert record is not None
    evidence = accounting.job_end_evidence(record, Resources(memory_mb=100), source="x",
                                           memory_enforced=False)  # mem_free: schedules only
    assert evidence.reason == "killed_by_system"
    assert OgsSystem("g", {"memory_resource": "mem_free"}).memory_enforced is False
    assert OgsSystem("g", {}).memory_enforced is True


def test_grid_engine_evidence_words() -> None:
    record = accounting.parse_accounting_line(GE_HRT)
    assert record is not None
    evidence = accounting.job_end_evidence(record, Resources(walltime_s=5), source="GE")
    assert evidence.said == ("(GE: failed 37 (limit enforced), exit status 137, wall time 6 s, "
                             "maxvmem 3.2 MB)")
    own = accounting.parse_accounting_line(GE_OWN_FAILURE)
    assert own is not None
    assert accounting.job_end_evidence(own, Resources(), source="GE").said == ""


def write_accounting(path: Path, lines: list[str]) -> Path:
    path.write_text("# Version: 8.1.9\n# \n# DO NOT MODIFY THIS FILE MANUALLY!\n# \n"
                    + "".join(f"{line}\n" for line in lines))
    return path


def renumbered(line: str, number: int, name: str, end: int) -> str:
    fields = line.split(":")
    fields[4], fields[5], fields[10] = name, str(number), str(end)
    return ":".join(fields)


def test_read_accounting_tail(tmp_path: Path) -> None:
    filler = [renumbered(GE_OWN_FAILURE, 1000 + i, f"other{i}", 1796000000 + i)
              for i in range(3000)]  # ~600 kB: many chunks read backwards
    path = write_accounting(tmp_path / "accounting", [
        renumbered(GE_HRT, 2, "execd-old", 1790000000),  # job number 2 long ago, another job
        *filler, GE_HRT, renumbered(GE_QDEL, 2, "exp_hrt", 1796118930), GE_VMEM])
    found = accounting.read_accounting_tail(path, {"2": "exp_hrt", "5": "exp_multi"})
    assert found["2"].failed == 100  # the latest record of the number wins
    assert found["5"].maxvmem_mb == 205.3
    found = accounting.read_accounting_tail(path, {"1005": "other5"})
    assert found["1005"].end_time == 1796000005
    # A wanted job that cannot have ended before `since` stops the reading there.
    found = accounting.read_accounting_tail(path, {"1005": "other5"}, since=1796002000)
    assert found == {}
    found = accounting.read_accounting_tail(path, {"2": "execd-old"}, max_bytes=4096)
    assert found == {}
    assert accounting.read_accounting_tail(path, {"2": "execd-old"})["2"].end_time == 1790000000
    with pytest.raises(OSError):
        accounting.read_accounting_tail(tmp_path / "missing", {"2": "x"})


class RecordedJobInfo:
    """DRMAA JobInfo of a job of the provisioned cell: h_rt=3 running `sleep 600` (Grid Engine
    8.1.9, python drmaa 0.7.9), as Session.wait returned it."""

    jobId = "6"
    hasExited = False
    exitStatus = 0
    hasSignal = True
    terminatedSignal = "SIGKILL"
    hasCoreDump = False
    wasAborted = False
    resourceUsage = {  # noqa: RUF012 - a recorded constant
        "io": "0.0000", "iow": "0.0000", "mem": "0.0000", "cpu": "0.0086", "vmem": "0.0000",
        "maxvmem": "1527808.0000", "submission_time": "1796119019.0000",
        "priority": "0.0000", "exit_status": "137.0000", "signal": "910.0000",
        "start_time": "1796119019.0000", "end_time": "1796119023.0000",
        "ru_wallclock": "4.0000", "ru_utime": "0.0000", "ru_stime": "0.0086",
        "ru_maxrss": "4488.0000", "acct_cpu": "0.0086", "acct_maxvmem": "1527808.0000"}


def test_record_from_job_info() -> None:
    record = accounting.record_from_job_info(RecordedJobInfo())
    assert record == accounting.JobEndRecord(
        job_number="6", exit_status=137, signal="SIGKILL", wall_s=4.0, cpu_s=0.0086,
        maxvmem_mb=1.5, maxrss_mb=4.4, end_time=1796119023.0)
    evidence = accounting.job_end_evidence(record, Resources(walltime_s=3), source="DRMAA")
    assert evidence.reason == "walltime_exceeded"
    assert accounting.job_end_evidence(record, Resources(), source="DRMAA").reason is None


def ended_ogs_job(tmp_path: Path, native_id: str, resources: Resources,
                  exit_code: str | None = None) -> drmaa_base.EndedJob:
    """A job the status pass found gone, submitted (its native id recorded) just now."""
    job = replace(make_job(tmp_path, ["sleep", "600"], resources=resources), native_id=native_id)
    record_native_id(job.job_dir, native_id)
    if exit_code is not None:
        job.exit_code_file.write_text(exit_code)
    return drmaa_base.EndedJob(job)


def test_ogs_reads_the_accounting_once_for_all_ended_jobs(tmp_path: Path) -> None:
    first = ended_ogs_job(tmp_path, "2", Resources(walltime_s=5))
    second = ended_ogs_job(tmp_path, "5", Resources(memory_mb=100))
    # The recorded lines, renamed with the jobs' tags (the names Grid Engine knows them by).
    path = write_accounting(tmp_path / "accounting", [
        renumbered(GE_HRT, 2, first.job.tag, int(time.time())),
        renumbered(GE_VMEM, 5, second.job.tag, int(time.time()))])
    system = OgsSystem("g", {"accounting_file": str(path)})
    evidence = system.ended_evidence([first, second])
    assert system.accounting_reads == 1
    assert evidence[first.job.job_id].reason == "walltime_exceeded"
    assert evidence[first.job.job_id].usage == Usage(wall_s=6.0, cpu_s=0.015071,
                                                     max_rss_mb=4.3, signal="SIGKILL", node="vm")
    assert evidence[second.job.job_id].reason == "memory_exceeded"
    assert "Grid Engine accounting: failed 37" in evidence[second.job.job_id].said


def test_ogs_waits_for_a_record_only_when_the_end_needs_it(tmp_path: Path) -> None:
    path = write_accounting(tmp_path / "accounting", [])
    system = OgsSystem("g", {"accounting_file": str(path), "accounting_wait": 3600})
    killed = ended_ogs_job(tmp_path, "7", Resources(walltime_s=5))  # no exit code
    signalled = ended_ogs_job(tmp_path, "8", Resources(), exit_code="143\n")
    exited = ended_ogs_job(tmp_path, "9", Resources(), exit_code="3\n")
    evidence = system.ended_evidence([killed, signalled, exited])
    assert evidence[killed.job.job_id].awaited
    assert evidence[signalled.job.job_id].awaited
    assert exited.job.job_id not in evidence  # its own exit code says how: no wait
    record_kill(killed.job.job_dir, "7", "terminated through Grid Engine")
    assert killed.job.job_id not in system.ended_evidence([killed])  # the engine killed it
    system.accounting_wait = 0  # the record never came: reported without it
    assert signalled.job.job_id not in system.ended_evidence([signalled])


def test_ogs_reports_of_ended_jobs(tmp_path: Path) -> None:
    """What the status pass reports of jobs that ended: unknown for now while the record is
    awaited; then the end with the record's cause, usage and words."""
    path = write_accounting(tmp_path / "accounting", [])
    system = OgsSystem("g", {"accounting_file": str(path), "accounting_wait": 3600})
    end = ended_ogs_job(tmp_path, "2", Resources(walltime_s=5))
    report = system._ended_reports([end])[end.job.job_id]
    assert (report.state, report.message) == (
        None, "ended; awaiting the Grid Engine accounting")
    write_accounting(path, [renumbered(GE_HRT, 2, end.job.tag, int(time.time()))])
    report = system._ended_reports([end])[end.job.job_id]
    assert (report.state, report.exit_code, report.reason) == (
        JobState.ERROR, None, "walltime_exceeded")
    assert report.message == (
        "the job ended without recording an exit code (killed by the system?) (no longer "
        "known to Grid Engine) (Grid Engine accounting: failed 37 (limit enforced), exit "
        "status 137, wall time 6 s, maxvmem 3.2 MB)")
    assert report.usage is not None and report.usage.node == "vm"
    end.job.exit_code_file.write_text("0\n")  # it completed: no cause
    report = system._ended_reports([end])[end.job.job_id]
    assert (report.state, report.reason) == (JobState.FINISHED, None)


def test_ogs_without_an_accounting_file_waits_for_nothing(tmp_path: Path) -> None:
    job = ended_ogs_job(tmp_path, "7", Resources(walltime_s=5))
    for options in ({"accounting_file": str(tmp_path / "missing")}, {"accounting_file": "none"}):
        system = OgsSystem("g", options)
        assert system.ended_evidence([job]) == {}
    assert OgsSystem("g", {"sge_root": "/sge", "sge_cell": "c"}).accounting_file == Path(
        "/sge/c/common/accounting")


# Torque 6's `qstat -f` of completed jobs (the layout of Torque's documentation; no Torque
# server here), and the recorded output of Slurm's Torque wrappers for a job that exited 3.
def torque_completed(exit_status: str, *, used_walltime: str = "00:01:02",
                     used_mem: str = "81920kb", walltime: str = "00:01:00",
                     mem: str = "1gb") -> str:
    return textwrap.dedent(f"""\
        Job Id: 77.torque.example.org
            Job_Name = execd-abc
            Job_Owner = alice@login.example.org
            resources_used.cput = 00:00:41
            resources_used.energy_used = 0
            resources_used.mem = {used_mem}
            resources_used.vmem = 301460kb
            resources_used.walltime = {used_walltime}
            job_state = C
            queue = batch
            exec_host = node07/0-1+node08/0
            Resource_List.mem = {mem}
            Resource_List.nodect = 1
            Resource_List.nodes = 1:ppn=2
            Resource_List.walltime = {walltime}
            exit_status = {exit_status}
        """)


WRAPPER_COMPLETED = ("Job Id:\t3\n\tJob_Name = t.sh\n\tJob_Owner = root@localhost\n"
                     "\tjob_state = C\n\tqueue = debug\n\tqtime = Tue Dec  1 09:58:27 2026\n"
                     "\tmtime = Tue Dec  1 09:58:28 2026\n\tctime = Tue Dec  1 09:58:29 2026\n"
                     "\texec_host = vm/1\n\tPriority = 4294901757\n\teuser = root(0)\n"
                     "\tegroup = root(0)\n\tResource_List.walltime = 71582788:15:00\n"
                     "\tResource_List.nodect = 1\n\tResource_List.ncpus = 1\n")


@pytest.mark.parametrize(("output", "reason"), [
    (torque_completed("-11"), "walltime_exceeded"),
    (torque_completed("-10"), "memory_exceeded"),
    (torque_completed("-4"), "node_failure"),
    (torque_completed("-12"), "killed_by_system"),
    (torque_completed("-9"), None),
    (torque_completed("271"), "walltime_exceeded"),  # SIGTERM from the MOM, past its walltime
    (torque_completed("265", used_walltime="00:00:10", used_mem="1048576kb"),
     "memory_exceeded"),  # SIGKILL at its memory
    (torque_completed("271", used_walltime="00:00:10"), "killed_by_system"),  # qdel
    (torque_completed("143"), None),  # the script's own status
    (torque_completed("0"), None),
    (WRAPPER_COMPLETED, None)])
def test_torque_exit_status_says_why(output: str, reason: str | None) -> None:
    (attrs,) = torque.parse_qstat_full(output).values()
    assert accounting.torque_evidence(attrs).reason == reason


def test_torque_usage() -> None:
    (attrs,) = torque.parse_qstat_full(torque_completed("271")).values()
    assert accounting.torque_evidence(attrs).usage == Usage(
        wall_s=62.0, cpu_s=41.0, max_rss_mb=80.0, signal="SIGTERM", node="node07")
    (attrs,) = torque.parse_qstat_full(WRAPPER_COMPLETED).values()
    assert accounting.torque_evidence(attrs).usage == Usage(node="vm")
    assert accounting.torque_size_mb("2gb") == 2048
    assert accounting.torque_size_mb("512kw") == 4
    assert accounting.torque_seconds("1:02:03") == 3723


def test_torque_status_reports_the_cause(tmp_path: Path) -> None:
    output = torque_completed("-11")
    bin_dir = fake_commands(tmp_path / "bin", qstat=f"cat <<'EOF'\n{output}EOF")
    system = TorqueCliSystem("t", {"bin_dir": str(bin_dir)})
    job = replace(make_job(tmp_path, ["sleep", "600"]), native_id="77.torque")
    job.exit_code_file.write_text("143\n")
    report = system.get_statuses([job])[job.job_id]
    assert (report.state, report.exit_code, report.reason) == (
        JobState.ERROR, 143, "walltime_exceeded")
    assert "Torque exit_status -11: job exceeded a walltime limit" in report.message
    assert report.usage is not None and report.usage.node == "node07"


def test_accounting_of_very_many_gone_jobs_is_still_one_call(tmp_path: Path) -> None:
    jobs = [replace(make_job(tmp_path, ["true"]), native_id=str(10**7 + i)) for i in range(3)]
    assert slurm.accounting_selection(jobs) == ["-j", "10000000,10000001,10000002"]
    many = [replace(jobs[0], native_id=str(10**7 + i)) for i in range(20_000)]
    assert slurm.accounting_selection(many) == []  # no submission recorded: the default window
    record_native_id(jobs[0].job_dir, "10000000")
    option, since = slurm.accounting_selection(many)
    assert option == "-S"
    assert accounting.slurm_timestamp(since) is not None
