"""The engine end to end: a real daemon on a real mongod running Local jobs."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Engine, _alive


def test_job_from_cli_and_job_from_pymongo_both_finish(engine: Engine) -> None:
    out = engine.cli("submit", "--name", "greeting", "--", "echo", "hello from the cli")
    cli_id = out.stdout.strip()
    direct_id = engine.submit("sh", "-c", "echo direct; echo oops >&2")
    cli_doc, direct_doc = engine.wait_ended([engine.store.get(cli_id)["_id"], direct_id])
    for doc in (cli_doc, direct_doc):
        assert doc["state"] == "finished", doc.get("status_message")
        assert doc["exit_code"] == 0
        assert doc["system"] == "local"
        assert [h["state"] for h in doc["history"]][-1] == "finished"
    assert Path(cli_doc["job_dir"], "job.stdout").read_text() == "hello from the cli\n"
    assert Path(direct_doc["job_dir"], "job.stdout").read_text() == "direct\n"
    assert Path(direct_doc["job_dir"], "job.stderr").read_text() == "oops\n"
    assert {"path": "job.stdout", "size": 7} in direct_doc["outputs"]
    assert direct_doc["started_at"] <= direct_doc["ended_at"]
    assert engine.cli("wait", cli_id, "--timeout", "10").returncode == 0


def test_failing_command_ends_in_error_with_its_exit_code(engine: Engine) -> None:
    job = engine.submit("sh", "-c", "exit 3")
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "error"
    assert doc["exit_code"] == 3
    assert "exit code 3" in doc["status_message"]
    waited = engine.cli("wait", str(job), check=False)
    assert waited.returncode == 1
    assert "error" in waited.stdout


def test_missing_program_ends_in_error(engine: Engine) -> None:
    (doc,) = engine.wait_ended([engine.submit("/no/such/program")])
    assert doc["state"] == "error"
    assert doc["exit_code"] == 127


def test_kill_running_job_ends_killed_and_its_processes_are_gone(engine: Engine,
                                                                  tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    job = engine.submit("sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait")
    engine.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="job start")
    child = int(pidfile.read_text())
    engine.wait_for(lambda: engine.store.get(job)["state"] == "running", what="state running")
    assert engine.cli("kill", str(job)).returncode == 0
    (doc,) = engine.wait_ended([job], timeout=30)
    assert doc["state"] == "killed"
    assert doc["status_message"] == "killed on request"
    engine.wait_for(lambda: not _alive(child), what="the job's child to die")


def test_kill_before_submission_ends_killed_without_running(engine_factory) -> None:
    # A Local system with one slot, held by a long job: the next job waits unsubmitted.
    engine = engine_factory("[systems]\n[[local]]\nclass = local\nslots = 1\nkill_grace = 1\n")
    blocker = engine.submit("sleep", "300")
    engine.wait_for(lambda: engine.store.get(blocker)["state"] == "running", what="blocker")
    waiting = engine.submit("sh", "-c", "echo should not run")
    engine.wait_for(lambda: engine.store.get(waiting)["state"] == "to be submitted",
                    what="the second job to wait for a slot")
    engine.store.request_cancel(waiting)
    engine.store.request_cancel(blocker)
    doc_waiting, doc_blocker = engine.wait_ended([waiting, blocker])
    assert doc_waiting["state"] == "killed"
    assert doc_waiting["status_message"] == "cancelled before submission"
    assert "native_id" not in doc_waiting
    assert doc_blocker["state"] == "killed"


def test_shell_metacharacters_reach_the_program_literally(engine: Engine) -> None:
    nasty = ["; rm -rf /tmp/x", "$(touch /tmp/pwned)", "`id`", "a\nb", "'quoted'", '"dq"',
             "$HOME", "*", "&& echo no", "|", "> /tmp/redirect"]
    job = engine.submit("printf", "%s\\0", *nasty)
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "finished"
    printed = Path(doc["job_dir"], "job.stdout").read_bytes().split(b"\0")[:-1]
    assert [p.decode() for p in printed] == nasty
    assert not Path("/tmp/pwned").exists()


def test_job_environment_is_documented_one(engine: Engine) -> None:
    job = engine.submit("sh", "-c", "env", environment={"MY_VAR": "x y;z"}, project="proj-1",
                        owner="alice")
    (doc,) = engine.wait_ended([job])
    env = dict(line.split("=", 1) for line in
               Path(doc["job_dir"], "job.stdout").read_text().splitlines() if "=" in line)
    assert env["MY_VAR"] == "x y;z"
    assert env["EXECD_JOB_ID"] == str(job)
    assert env["EXECD_PROJECT"] == "proj-1"
    assert env["EXECD_OWNER"] == "alice"
    assert env["EXECD_JOB_DIR"] == doc["job_dir"]
    assert Path(doc["job_dir"]).parent.name == "proj-1"
