"""The engine under load and under crashes: every job ends, runs and is notified exactly once."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Engine, SmtpServer


def smtp_config(smtp: SmtpServer, slots: int = 8, pools: str = "") -> str:
    return f"""
[actors]
building = 1
submit = 2
status = 1
notification = 1
batch_size = 100
{pools}

[notification]
smtp_host = {smtp.host}
smtp_port = {smtp.port}
sender = execd@test.example
retry_backoff = 0.2

[systems]
[[local]]
class = local
slots = {slots}
kill_grace = 2
"""


def counted_jobs(engine: Engine, ledger: Path, n: int, sleep: str = "0") -> list[Any]:
    """n jobs that each append their id to ``ledger`` once (the side effect that proves how
    many times each ran). O_APPEND writes of one short line do not interleave."""
    docs = [{"state": "to be built", "name": f"job-{i}", "owner": f"user{i % 5}@test.example",
             "command": ["sh", "-c", f'sleep {sleep}; echo "$EXECD_JOB_ID" >> {ledger}']}
            for i in range(n)]
    return engine.store.jobs.insert_many(docs).inserted_ids


def assert_each_ran_and_was_notified_once(engine: Engine, ids: list[Any], ledger: Path,
                                          smtp: SmtpServer) -> None:
    docs = engine.wait_ended(ids, timeout=240)
    assert Counter(d["state"] for d in docs) == {"finished": len(ids)}, \
        Counter((d["state"], d.get("status_message")) for d in docs).most_common(5)
    runs = Counter(ledger.read_text().split())
    assert set(runs) == {str(i) for i in ids}
    assert max(runs.values()) == 1, [k for k, v in runs.items() if v > 1][:5]
    engine.wait_for(lambda: engine.store.jobs.count_documents(
        {"_id": {"$in": ids}, "notification.state": "sent"}) == len(ids),
        timeout=120, what="every notification sent")
    # Give a duplicate email a chance to arrive before counting.
    time.sleep(1)
    mailed = Counter(m["X-Execd-Job"] for m in smtp.messages)
    assert set(mailed) == {str(i) for i in ids}
    assert max(mailed.values()) == 1


def test_500_jobs_at_once_each_run_and_notified_exactly_once(engine_factory, smtp, tmp_path):
    engine = engine_factory(smtp_config(smtp))
    ledger = tmp_path / "ledger"
    ids = counted_jobs(engine, ledger, 500)
    assert_each_ran_and_was_notified_once(engine, ids, ledger, smtp)
    first = engine.store.get(ids[0])
    message = next(m for m in smtp.messages if m["X-Execd-Job"] == str(ids[0]))
    assert message["To"] == first["owner"]
    assert "finished" in message["Subject"]


@pytest.mark.parametrize("victim", ["monitor", "building-actor", "submit-actor",
                                    "status-actor", "notification-actor"])
def test_sigkill_of_a_process_mid_run_loses_and_repeats_nothing(engine_factory, smtp, tmp_path,
                                                                 victim):
    engine = engine_factory(smtp_config(smtp, slots=6))
    ledger = tmp_path / "ledger"
    ids = counted_jobs(engine, ledger, 150, sleep="0.05")
    engine.wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) >= 10,
                    what="jobs to be running")
    before = engine.wait_for(lambda: engine.actor_pids(victim).get(victim), what=victim)
    pid = before[0]
    os.kill(pid, signal.SIGKILL)
    engine.wait_for(lambda: pid not in engine.actor_pids(victim).get(victim, [pid])
                    and len(engine.actor_pids(victim).get(victim, [])) == len(before),
                    timeout=30, what=f"{victim} to be restarted")
    assert_each_ran_and_was_notified_once(engine, ids, ledger, smtp)
    if victim != "monitor":
        assert "terminated unexpectedly" in engine.log_file.read_text()


def test_stop_and_start_while_jobs_run_loses_and_repeats_nothing(engine_factory, smtp, tmp_path):
    engine = engine_factory(smtp_config(smtp, slots=4))
    ledger = tmp_path / "ledger"
    ids = counted_jobs(engine, ledger, 60, sleep="0.3")
    engine.wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) >= 4,
                    what="jobs to be running")
    engine.stop()
    transitional = engine.store.jobs.count_documents(
        {"_id": {"$in": ids}, "state": {"$in": ["building", "submitting"]}})
    assert transitional == 0, "a warm stop left jobs in a transitional state"
    running = engine.store.jobs.count_documents({"_id": {"$in": ids}, "state": "running"})
    time.sleep(0.5)  # jobs keep running while the engine is down
    engine.start()
    assert_each_ran_and_was_notified_once(engine, ids, ledger, smtp)
    assert running >= 0


def test_whole_engine_killed_then_restarted_every_job_ends_once(engine_factory, smtp, tmp_path):
    engine = engine_factory(smtp_config(smtp, slots=6))
    ledger = tmp_path / "ledger"
    ids = counted_jobs(engine, ledger, 120, sleep="0.1")
    engine.wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) >= 6,
                    what="jobs to be running")
    time.sleep(random.uniform(0, 0.3))
    engine.kill_all()
    engine.start()
    assert_each_ran_and_was_notified_once(engine, ids, ledger, smtp)
