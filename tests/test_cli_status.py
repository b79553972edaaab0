"""``execd status`` reads the daemon document's ``actors`` and says when the daemon is
degraded. The daemon here is a stand-in: a live process named execd, its pid file and status
file, and a daemon document written into a real mongod, as the Monitor writes it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from execution_engine.store import JobStore
from tests.conftest import ROOT, Engine, execd_command

INSTANCE = "testhost/0123456789ab"


@dataclass
class StandIn:
    config: Path
    store: JobStore

    def status(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(execd_command("-c", str(self.config), "status"),
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              check=False)

    def actors(self, actors: list[dict[str, Any]] | None) -> None:
        doc: dict[str, Any] = {"_id": INSTANCE, "host": "testhost", "pid": 1,
                               "heartbeat_at": datetime.now(UTC)}
        if actors is not None:
            doc["actors"] = actors
        self.store.daemons.replace_one({"_id": INSTANCE}, doc, upsert=True)


@pytest.fixture
def stand_in(tmp_path: Path, mongo_uri: str, store: JobStore) -> Iterator[StandIn]:
    state_dir = tmp_path / "state"
    (state_dir / "run").mkdir(parents=True)
    config = tmp_path / "execd.ini"
    config.write_text(textwrap.dedent(f"""\
        [engine]
        state_dir = {state_dir}

        [mongodb]
        uri = {mongo_uri}
        database = {store.db.name}
        """))
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                "execd-status-test"])
    (state_dir / "execd.pid").write_text(f"{process.pid}\n")
    (state_dir / "run" / "status.json").write_text(json.dumps({
        "pid": process.pid, "started_at": time.time() - 3700, "instance": INSTANCE,
        "mongodb_uri": mongo_uri, "embedded_mongodb": False}))
    try:
        yield StandIn(config, store)
    finally:
        process.kill()
        process.wait()


def actor(name: str, state: str, restarts: int = 0, last_exit: str | None = None
          ) -> dict[str, Any]:
    kind, _, index = name.rpartition("-")
    return {"name": name, "kind": kind, "index": int(index), "state": state, "pid": 4242,
            "restarts": restarts, "last_exit": last_exit, "since": datetime.now(UTC)}


def test_status_shows_each_actor_and_exits_0_when_all_are_fine(stand_in: StandIn) -> None:
    stand_in.store.insert({"state": "to be built", "command": ["true"]})
    stand_in.actors([actor("building-0", "running"), actor("submit-0", "running", 2,
                                                           "exit code 1"),
                     actor("status-0", "backoff", 1, "signal 9")])
    result = stand_in.status()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "execd is running" in out and "up 01:01:" in out
    assert "to be built" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()
             if line.startswith("  ") and "-" in line.split()[0]}
    assert lines["submit-0"][1:3] == ["running", "2"] and "exit code 1" in " ".join(
        lines["submit-0"])
    assert lines["status-0"][1:3] == ["backoff", "1"]
    assert "degraded" not in out


def test_status_exits_1_running_but_degraded_when_an_actor_is_failing(stand_in: StandIn
                                                                       ) -> None:
    stand_in.actors([actor("building-0", "running"),
                     actor("submit-0", "failing", 7, "exit code 1"),
                     actor("notification-0", "failing", 6, "signal 11")])
    result = stand_in.status()
    assert result.returncode == 1
    assert "execd is running but degraded: submit-0, notification-0 are failing" in result.stdout
    assert "failing   7" in result.stdout or "failing  7" in result.stdout


def test_status_without_actors_reported_says_so(stand_in: StandIn) -> None:
    stand_in.actors(None)
    result = stand_in.status()
    assert result.returncode == 0 and "actors:   not reported yet" in result.stdout


def test_status_of_a_stopped_daemon_exits_3_and_a_stale_pid_file_1(tmp_path: Path) -> None:
    config = tmp_path / "execd.ini"
    config.write_text(f"[engine]\nstate_dir = {tmp_path}\n")
    command = execd_command("-c", str(config), "status")
    stopped = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert stopped.returncode == 3 and "not running" in stopped.stdout
    (tmp_path / "execd.pid").write_text("999999\n")
    stale = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert stale.returncode == 1 and "pid file" in stale.stdout


def test_status_of_a_real_daemon_lists_its_running_actors(engine: Engine) -> None:
    def listed() -> str | None:
        out = engine.cli("status").stdout
        return out if "submit-0" in out and "building-0" in out else None

    out = engine.wait_for(listed, what="the actors in execd status")
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")
            and line.split()[0].rpartition("-")[0] in ("building", "submit", "status",
                                                       "notification")]
    assert rows and all(row[1] in ("starting", "running") for row in rows), out
