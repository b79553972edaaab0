"""Notifications: once per ended job, retried with backoff while the SMTP server is down."""

from __future__ import annotations

import time
from collections import Counter

from aiosmtpd.controller import Controller

from execution_engine.actors.notification import is_email, render
from execution_engine.mongod import free_port
from tests.conftest import Inbox


def test_failed_notifications_are_retried_until_the_server_is_back(engine_factory) -> None:
    port = free_port()  # nothing listens there yet
    engine = engine_factory(f"""
[notification]
smtp_host = 127.0.0.1
smtp_port = {port}
smtp_timeout = 2
retry_backoff = 0.5
max_attempts = 20
""")
    ids = [engine.submit("true", owner=f"u{i}@example.org") for i in range(5)]
    silent = engine.submit("true", owner="nobody@example.org", notify=False)
    local_user = engine.submit("true", owner="alice")
    engine.wait_ended([*ids, silent, local_user])
    engine.wait_for(lambda: all(
        (engine.store.get(i).get("notification") or {}).get("attempts", 0) >= 1
        and engine.store.get(i)["notification"].get("state") == "due" for i in ids),
        what="a failed first attempt on every job")
    doc = engine.store.get(ids[0])
    assert "Connection refused" in doc["notification"]["error"]
    assert engine.store.get(silent)["notification"]["state"] == "none"
    # Not an email address and no notifier plugin: nothing to do, said at once.
    engine.wait_for(lambda: engine.store.get(local_user)["notification"]["state"] == "none",
                    what="the local user's notification")

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        engine.wait_for(lambda: all(engine.store.get(i)["notification"]["state"] == "sent"
                                    for i in ids), timeout=60, what="every notification sent")
        time.sleep(1)
        counts = Counter(m["X-Execd-Job"] for m in inbox.messages)
        assert counts == {str(i): 1 for i in ids}
    finally:
        controller.stop()


def test_templates_fill_known_fields_and_keep_unknown_ones() -> None:
    job = {"_id": "j1", "name": "blast", "state": "error", "exit_code": 3,
           "status_message": "exit code 3"}
    assert render("{name} {state} ({exit_code}) {nope}", job) == "blast error (3) {nope}"
    assert render("{unbalanced", job) == "{unbalanced"
    assert is_email("a@b.org") and not is_email("alice") and not is_email("a b@c")
