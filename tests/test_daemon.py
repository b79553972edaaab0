"""``execd start/stop/status/reload`` as an administrator uses them, on the embedded MongoDB."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from execution_engine.mongod import EmbeddedMongo, free_port
from tests.conftest import ROOT, Engine, _alive, execd_command, process_tree


def run(config: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(execd_command("-c", str(config), *args), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def daemon_tree(pid: int) -> list[int]:
    return process_tree(pid)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Path]:
    """A config using the embedded MongoDB; the daemon is stopped at the end whatever happens."""
    config = tmp_path / "execd.ini"
    config.write_text(f"[engine]\nstate_dir = {tmp_path / 'state'}\n"
                      f"[mongodb]\nembedded_port = {free_port()}\n"
                      "[monitor]\npoll_interval = 0.5\n")
    yield config
    pid_file = tmp_path / "state" / "execd.pid"
    if pid_file.exists():
        run(config, "stop")


def test_start_submit_wait_status_stop_on_the_embedded_default(embedded: Path) -> None:
    started = run(embedded, "start")
    assert started.returncode == 0, started.stderr
    assert "execd started" in started.stdout
    pid = int((embedded.parent / "state" / "execd.pid").read_text())

    def titles() -> set[bytes]:
        return {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
                for p in daemon_tree(pid)}

    expected = {b"execd: monitor", b"execd: log-receiver"} | {
        f"execd: {kind}-actor".encode()
        for kind in ("building", "submit", "status", "notification")}
    deadline = time.monotonic() + 30
    while not expected <= titles() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert expected <= titles()
    assert any(b"mongod" in t for t in titles())
    tree = daemon_tree(pid)

    again = run(embedded, "start")
    assert again.returncode == 1
    assert f"already running (pid {pid}" in again.stderr

    job = run(embedded, "submit", "--name", "demo", "--", "echo", "hello").stdout.strip()
    waited = run(embedded, "wait", job, "--timeout", "60")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    shown = run(embedded, "show", job)
    assert "finished" in shown.stdout and "job.stdout" in shown.stdout
    listed = run(embedded, "jobs", "--state", "finished")
    assert job in listed.stdout

    status = run(embedded, "status")
    assert status.returncode == 0
    assert f"pid {pid}" in status.stdout
    assert "[embedded]" in status.stdout
    assert "finished" in status.stdout

    stopped = run(embedded, "stop")
    assert stopped.returncode == 0 and "execd stopped" in stopped.stdout
    time.sleep(0.5)
    assert [p for p in tree if _alive(p)] == [], "processes left behind after stop"
    assert run(embedded, "status").returncode == 3
    gone = run(embedded, "submit", "--", "true")
    assert gone.returncode == 1 and "not running" in gone.stderr


def test_stale_pid_file_is_detected_and_replaced(embedded: Path) -> None:
    assert run(embedded, "start").returncode == 0
    pid_file = embedded.parent / "state" / "execd.pid"
    pid = int(pid_file.read_text())
    tree = daemon_tree(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in tree), "children must not outlive a killed master"
    assert pid_file.exists()
    status = run(embedded, "status")
    assert status.returncode == 1 and "pid file" in status.stdout
    restarted = run(embedded, "start")
    assert restarted.returncode == 0, restarted.stderr
    assert "removed stale pid file" in restarted.stdout
    assert int(pid_file.read_text()) != pid


def embedded_port(config: Path) -> int:
    line = next(x for x in config.read_text().splitlines() if x.startswith("embedded_port"))
    return int(line.split("=")[1])


def test_start_right_after_the_master_was_killed(embedded: Path) -> None:
    assert run(embedded, "start").returncode == 0
    pid = int((embedded.parent / "state" / "execd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    restarted = run(embedded, "start")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    job = run(embedded, "submit", "--", "true").stdout.strip()
    waited = run(embedded, "wait", job, "--timeout", "60")
    assert waited.returncode == 0, waited.stdout + waited.stderr


def test_a_mongod_left_by_a_killed_daemon_is_stopped_at_the_next_start(embedded: Path) -> None:
    state = embedded.parent / "state"
    left = EmbeddedMongo(state / "mongodb", embedded_port(embedded))
    left.start()  # as a daemon killed before it could stop its mongod would leave it
    assert left.process is not None
    try:
        started = run(embedded, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert left.process.wait(60) is not None
        assert "a killed daemon left behind" in (state / "execd.log").read_text()
        job = run(embedded, "submit", "--", "true").stdout.strip()
        waited = run(embedded, "wait", job, "--timeout", "60")
        assert waited.returncode == 0, waited.stdout + waited.stderr
    finally:
        left.stop()


def test_bad_config_is_refused_naming_file_section_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.ini"
    config.write_text("[actors]\nsubmit = many\n[monitor]\nlease_seconds = 0\n")
    result = run(config, "start")
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "[actors] submit" in result.stderr and "[monitor] lease_seconds" in result.stderr


def test_status_when_never_started(tmp_path: Path) -> None:
    config = tmp_path / "execd.ini"
    config.write_text(f"[engine]\nstate_dir = {tmp_path}\n")
    result = run(config, "status")
    assert result.returncode == 3
    assert "not running" in result.stdout


def test_reload_applies_new_pool_sizes_and_refuses_a_bad_config(engine: Engine) -> None:
    assert len(engine.actor_pids("submit-actor")["submit-actor"]) == 1
    text = engine.config_path.read_text()
    engine.config_path.write_text(text + "\n[actors]\nsubmit = 3\n")
    reloaded = engine.cli("reload")
    assert "execd reloaded" in reloaded.stdout
    engine.wait_for(lambda: len(engine.actor_pids("submit-actor").get("submit-actor", [])) == 3,
                    what="three submit actors")
    (job,) = engine.wait_ended([engine.submit("true")])
    assert job["state"] == "finished"

    engine.config_path.write_text(text + "\n[actors]\nsubmit = lots\n")
    refused = engine.cli("reload", check=False)
    assert refused.returncode != 0
    assert "[actors] submit" in refused.stderr
    (job,) = engine.wait_ended([engine.submit("true")])
    assert job["state"] == "finished"
    assert len(engine.actor_pids("submit-actor")["submit-actor"]) == 3


def test_reload_keeps_running_jobs_running(engine: Engine, tmp_path: Path) -> None:
    marker = tmp_path / "done"
    job = engine.submit("sh", "-c", f"sleep 2; touch {marker}")
    engine.wait_for(lambda: (engine.store.get(job) or {}).get("state") == "running",
                    what="running")
    engine.cli("reload")
    (doc,) = engine.wait_ended([job], timeout=30)
    assert doc["state"] == "finished" and marker.exists()
