"""The daemon's health as an operator sees it, on real daemons: the actor table in the daemon's
document, an actor that keeps dying shown ``failing`` while the others work on, and a log
receiver killed by SIGKILL replaced by one that logs again."""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from execution_engine.monitor.supervision import FAILING_RESTARTS
from tests.conftest import Engine

# A drop-in execution system whose constructor fails in one actor process only (submit-1):
# that actor dies at every start, while submit-0 and the status actor make it without trouble.
FLAKY_SYSTEM = '''\
    import multiprocessing
    from typing import ClassVar

    from execution_engine import execution_system
    from execution_engine.systems.local import LocalSystem


    @execution_system
    class FlakySystem(LocalSystem):
        kind: ClassVar[str] = "flaky"

        def __init__(self, name, options):
            if multiprocessing.current_process().name == "submit-1":
                raise RuntimeError("this actor cannot make the flaky system")
            super().__init__(name, options)
    '''


def daemon_doc(engine: Engine) -> dict[str, Any]:
    docs = list(engine.store.daemons.find())
    assert len(docs) == 1, docs
    return docs[0]


def actors_by_name(engine: Engine) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in daemon_doc(engine).get("actors", [])}


def test_the_daemon_document_holds_the_actor_table(engine: Engine) -> None:
    table = engine.wait_for(lambda: (t := actors_by_name(engine)) and all(
        a["state"] == "running" for a in t.values()) and t, what="every actor running")
    assert set(table) == {"building-0", "submit-0", "status-0", "notification-0"}
    pids = engine.actor_pids()
    for name, entry in table.items():
        kind = name.split("-")[0]
        assert entry["kind"] == kind and entry["index"] == 0
        assert pids[f"{kind}-actor"] == [entry["pid"]]
        assert (entry["restarts"], entry["last_exit"]) == (0, None)
        assert entry["since"] is not None
    status = engine.cli("status")
    assert "submit-0" in status.stdout and "running" in status.stdout

    # A crash is in the table at once, then the restart.
    victim = table["status-0"]["pid"]
    os.kill(victim, signal.SIGKILL)
    entry = engine.wait_for(
        lambda: (e := actors_by_name(engine)["status-0"])["restarts"] == 1 and e,
        what="the status actor restarted")
    assert entry["last_exit"] == "was killed by signal 9 (SIGKILL)"
    assert entry["pid"] != victim
    engine.wait_for(lambda: actors_by_name(engine)["status-0"]["state"] == "running",
                    what="the new status actor running")
    (job,) = engine.wait_ended([engine.submit("true", notify=False)])
    assert job["state"] == "finished"


def test_an_actor_that_keeps_dying_is_failing_and_the_others_work_on(
        engine_factory: Callable[..., Engine], tmp_path: Path) -> None:
    folder = tmp_path / "systems"
    folder.mkdir()
    (folder / "flaky.py").write_text(textwrap.dedent(FLAKY_SYSTEM))
    engine = engine_factory(textwrap.dedent(f"""\
        [actors]
        submit = 2
        [plugins]
        systems = {folder}
        [systems]
            [[local]]
            class = local
            slots = 4
            [[flaky]]
            class = flaky
            slots = 1
        [routes]
            [[default]]
            system = local
        """), start=False)
    engine.start()

    entry = engine.wait_for(
        lambda: (e := actors_by_name(engine).get("submit-1")) and e["state"] == "failing" and e,
        timeout=90, what="submit-1 failing")
    assert entry["restarts"] >= FAILING_RESTARTS
    assert entry["last_exit"] == "exited with status 1"
    assert "cannot make the flaky system" in engine.log_file.read_text()
    status = engine.cli("status", check=False)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "degraded: submit-1 is failing" in status.stdout

    # The others are up and were never restarted, and jobs still run to the end.
    jobs = [engine.submit("echo", str(n), notify=False) for n in range(6)]
    docs = engine.wait_ended(jobs, timeout=90)
    assert [d["state"] for d in docs] == ["finished"] * 6
    assert {d["system"] for d in docs} == {"local"}
    table = actors_by_name(engine)
    assert table["submit-1"]["state"] == "failing"
    others = {name: (a["state"], a["restarts"]) for name, a in table.items()
              if name != "submit-1"}
    assert others == dict.fromkeys(("building-0", "submit-0", "status-0", "notification-0"),
                                   ("running", 0))


def test_a_log_receiver_killed_by_sigkill_is_replaced_and_logging_goes_on(engine: Engine
                                                                          ) -> None:
    (receiver,) = engine.actor_pids("log-receiver")["log-receiver"]
    os.kill(receiver, signal.SIGKILL)
    engine.wait_for(lambda: (p := engine.actor_pids("log-receiver").get("log-receiver"))
                    and p != [receiver], what="a new log receiver")

    # New lines from actors reach the file: a restarted submit actor logs its start.
    (actor,) = engine.actor_pids("submit-actor")["submit-actor"]
    os.kill(actor, signal.SIGKILL)
    new = engine.wait_for(lambda: [p for p in engine.actor_pids("submit-actor").get(
        "submit-actor", []) if p != actor], what="a new submit actor")[0]
    engine.wait_for(lambda: f"submit-0[{new}] DEBUG" in engine.log_file.read_text(),
                    what="a log line of the new submit actor")
    text = engine.log_file.read_text()
    assert "the log receiver died and was restarted" in text
    assert f"(pid {actor}) terminated unexpectedly" in text
    (job,) = engine.wait_ended([engine.submit("true", notify=False)])
    assert job["state"] == "finished"
