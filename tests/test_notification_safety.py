"""Mail is header-safe: one valid recipient, no value able to add a header, no crash."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from execution_engine.notifications import (
    MailError,
    compose,
    is_email,
    notification_channels,
    recipient,
    render,
    strip_controls,
)
from tests.conftest import Engine, SmtpServer

SETTINGS: Any = SimpleNamespace(smtp_host="127.0.0.1", sender="execd@localhost",
                                subject="[execd] job {name} {state}", body="")

GOOD = ["a@b.org", "alice.smith+tag@example.org", "u0@example.org", "root@localhost",
        "x_y-z@sub.domain-1.example"]
BAD = ["alice", "a b@c.org", "a@b.org\r\nBcc: evil@x.org", "a@b.org\nBcc: evil@x.org",
       "a@b.org,b@c.org", "a@b.org;b@c.org", "a@b.org, b@c.org", "Alice <a@b.org>",
       "<a@b.org>", "a@b.org (comment)", '"a b"@b.org', '"a"@b.org', "a@b.org\n", " a@b.org",
       "a@@b.org", "a@", "@b.org", "a@b..org", "a@-b.org", "a@b.org\x00", "\u00e4@b.org",
       "a@b.org>", "a.@b.org", ".a@b.org", "a@[127.0.0.1]", "a@b.org\u2028x",
       "a" * 65 + "@b.org", "a@" + "b" * 250 + ".org", 42, None, ["a@b.org"]]


@pytest.mark.parametrize("address", GOOD)
def test_one_plain_address_is_a_recipient(address: str) -> None:
    assert recipient(address) == address and is_email(address)


@pytest.mark.parametrize("address", BAD)
def test_anything_but_one_plain_address_is_not(address: Any) -> None:
    assert recipient(address) is None and not is_email(address)


@pytest.mark.parametrize("notify", ["a@x.org,b@y.org", "true", 1, 0, [], {"$ne": 1}, None])
def test_notify_must_be_a_boolean_else_nothing_is_sent(notify: Any) -> None:
    job = {"_id": "j", "owner": "c@example.org", "notify": notify}
    assert notification_channels(job, SETTINGS, hook_count=1) == []
    assert notification_channels({**job, "notify": True}, SETTINGS, 1) == ["email", "hooks"]
    assert notification_channels({"_id": "j", "owner": "c@example.org"}, SETTINGS, 0) == \
        ["email"]


def test_every_templated_value_is_stripped_of_control_characters() -> None:
    job = {"_id": "j\r\n1", "name": "a\r\nBcc: evil@x.org\x00\x1b[31m\u2028", "state": "error",
           "status_message": "line one\nline two", "owner": "o@x.org"}
    assert strip_controls("a\r\nb\tc\x7fd\x85e") == "a  b c d e"
    assert render("{name}|{job_id}|{message}", job) == \
        "a  Bcc: evil@x.org  [31m |j  1|line one line two"


def test_a_composed_mail_has_one_recipient_and_no_injected_header() -> None:
    job = {"_id": "j1", "name": "r\r\nBcc: evil@x.org\r\nX-Injected: yes", "state": "finished",
           "owner": "alice@example.org", "project": "p\nq"}
    message, to = compose(job, SETTINGS)
    assert to == "alice@example.org" and message["To"] == "alice@example.org"
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert "\n" not in str(message["Subject"])
    text = message.as_string()
    assert "\nBcc:" not in text and "\nX-Injected:" not in text
    for owner in ("bob@example.org\r\nBcc: evil@x.org", "a@x.org,b@y.org", "Eve <e@x.org>"):
        with pytest.raises(MailError, match="is not one email address"):
            compose({**job, "owner": owner}, SETTINGS)


def test_hostile_owners_and_names_neither_crash_the_actor_nor_inject(
        engine_factory: Callable[..., Engine], smtp: SmtpServer) -> None:
    engine = engine_factory(f"""
[notification]
smtp_host = {smtp.host}
smtp_port = {smtp.port}
max_attempts = 3
retry_backoff = 0.2
""")
    injected_name = engine.submit("true", owner="alice@example.org",
                                  name="report\r\nBcc: evil@example.org\r\nX-Injected: 1")
    hostile = {
        "crlf_owner": engine.submit("true", owner="bob@example.org\r\nBcc: evil@example.org"),
        "two_owners": engine.submit("true", owner="a@example.org,b@example.org"),
        "display_name": engine.submit("true", owner="Eve <evil@example.org>"),
    }
    notify_list = engine.submit("true", owner="carol@example.org",
                                notify="a@example.org,b@example.org")
    engine.wait_ended([injected_name, *hostile.values(), notify_list])
    before = engine.actor_pids()
    notifiers = {k: v for k, v in before.items() if "notification" in k}
    assert notifiers
    after_id = engine.submit("true", owner="dave@example.org")  # the actor still works
    engine.wait_ended([after_id])
    engine.wait_for(lambda: len(smtp.messages) >= 2, what="two mails")
    time.sleep(1)

    assert sorted(m["X-Rcpt"] for m in smtp.messages) == ["alice@example.org",
                                                          "dave@example.org"]
    for message in smtp.messages:
        assert message["Bcc"] is None and message["X-Injected"] is None
        assert len(message.get_all("To")) == 1
    alice = next(m for m in smtp.messages if m["X-Rcpt"] == "alice@example.org")
    assert alice["To"] == "alice@example.org" and "report" in alice["Subject"]
    assert "\n" not in str(alice["Subject"]).replace("\n ", "")

    def notification(job_id: object) -> dict[str, Any]:
        doc = engine.store.get(job_id)
        assert doc is not None
        return dict(doc["notification"])

    for job_id in hostile.values():
        note = notification(job_id)
        assert note["state"] == "failed", note
        assert "is not one email address" in note["error"]
    assert notification(notify_list)["state"] == "none"
    assert {k: v for k, v in engine.actor_pids().items() if "notification" in k} == notifiers
