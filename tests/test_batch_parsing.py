"""Fast tests of the cluster systems without a cluster: command builders, output parsers, state
tables, the error contract of the command-line template (with stand-in scheduler commands), and
the DRMAA base's environment and lazy loading."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from execution_engine.config import SystemSection
from execution_engine.errors import ConfigError, SubmissionRejected, SystemUnavailable
from execution_engine.plugins import system_options
from execution_engine.states import JobState
from execution_engine.systems import drmaa_base, ogs, slurm, torque
from execution_engine.systems.base import PID_NAME, ExecutionSystem, Resources
from execution_engine.systems.batch import (
    forgotten_id,
    looks_transient,
    run_command,
)
from execution_engine.systems.ogs import OgsSystem
from execution_engine.systems.records import record_native_id
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
        "/opt/slurm/bin/squeue", "-h", "-t", "all", "-o", "%i|%T|%r", "-j", "1,2,3"]


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


def test_parse_sacct_output() -> None:
    out = "7|execd-a|CANCELLED by 0|0:15\n7.batch|batch|CANCELLED|0:15\n8|b|COMPLETED|0:0\n"
    assert slurm.parse_sacct_output(out) == {"7": ("execd-a", "CANCELLED", "0:15"),
                                             "8": ("b", "COMPLETED", "0:0")}


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
