"""The Notification actor: tells the owner once that a job ended.

Every ended job carries ``notification.state = "due"`` (or ``"none"`` when the client set
``notify: false``). The actor claims due notifications in batches and, for each job, sends:

* an email to the owner when the owner is an email address and ``[notification] smtp_host`` is
  set (subject and body are templates with ``{job_id}``, ``{name}``, ``{state}``,
  ``{exit_code}``, ``{message}``, ``{job_dir}``, ``{owner}``, ``{project}``);
* the ``execd_job_ended`` plugin hook (webhooks and other notifiers).

When neither applies, the Status actor ends the job with ``notification.state = "none"`` at once
(no claim, no second write), and so does this actor for the few jobs ended elsewhere.

Each channel is recorded as done when it succeeds, so a retry only repeats what failed. A failure
is retried with exponential backoff up to ``max_attempts``, then the notification is ``failed``
with the reason; a slow or dead SMTP server never holds other jobs for long (the rest of the batch
is put off once the server fails). Delivery is at least once: a crash between sending and
recording can repeat one message.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Mapping
from datetime import timedelta
from email.message import EmailMessage
from typing import Any, ClassVar

from pymongo import UpdateOne

from execution_engine.actors.base import Actor, LeaseKeeper
from execution_engine.config import NotificationSection
from execution_engine.logs import job_extra
from execution_engine.registry import load_registry
from execution_engine.store import utcnow

log = logging.getLogger(__name__)

DEFAULT_BODY = (
    "Your job {name} ({job_id}) ended: {state}.\n"
    "Exit code: {exit_code}\n"
    "{message}\n"
    "Job directory: {job_dir}\n"
)


def is_email(address: object) -> bool:
    return isinstance(address, str) and "@" in address and " " not in address


def notification_channels(job: Mapping[str, Any], settings: NotificationSection,
                          hook_count: int) -> list[str]:
    """How the owner of ``job`` is to be told that it ended: ``email`` (an email owner and an SMTP
    server), ``hooks`` (plugins implement ``execd_job_ended``); empty when nothing applies or
    the job says ``notify: false``."""
    if job.get("notify", True) is False:
        return []
    channels = []
    if settings.smtp_host and is_email(job.get("owner")):
        channels.append("email")
    if hook_count:
        channels.append("hooks")
    return channels


class _Fields(dict[str, Any]):
    """Template values; an unknown ``{field}`` in a template stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, job: Mapping[str, Any]) -> str:
    fields = _Fields(
        job_id=str(job["_id"]), name=job.get("name") or str(job["_id"]),
        state=job.get("state", ""), exit_code=job.get("exit_code"),
        message=job.get("status_message", ""), job_dir=job.get("job_dir", ""),
        owner=job.get("owner", ""), project=job.get("project", "default"),
    )
    try:
        return template.format_map(fields)
    except (ValueError, IndexError):  # a malformed template: send it as written
        return template


class Mailer:
    """One SMTP connection for a batch of messages."""

    def __init__(self, settings: NotificationSection) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def send(self, job: Mapping[str, Any]) -> None:
        s = self.settings
        message = EmailMessage()
        message["From"] = s.sender
        message["To"] = job["owner"]
        message["Subject"] = render(s.subject, job).replace("\n", " ")
        message["X-Execd-Job"] = str(job["_id"])
        message.set_content(render(s.body or DEFAULT_BODY, job))
        if self._smtp is None:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            self._smtp = smtp
        self._smtp.send_message(message)

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except smtplib.SMTPException:
                pass
            except OSError:
                pass
            self._smtp = None


class NotificationActor(Actor):
    kind: ClassVar[str] = "notification"

    def setup(self) -> None:
        self.hooks = load_registry(self.config).manager.hook
        self.hook_count = len(self.hooks.execd_job_ended.get_hookimpls())

    def work_once(self) -> bool:
        jobs = self.store.claim_notifications(
            owner=self.owner, limit=self.config.actors.batch_size,
            lease_seconds=self.config.monitor.lease_seconds,
        )
        if not jobs:
            return False
        mailer = Mailer(self.config.notification)
        smtp_down: str | None = None
        changes = []
        keeper = LeaseKeeper(self.store, jobs, self.config.monitor.lease_seconds)
        try:
            keeper.__enter__()
            for job in jobs:
                done = set(job.get("notification", {}).get("done", []))
                channels = notification_channels(job, self.config.notification, self.hook_count)
                errors = []
                if "email" in channels and "email" not in done:
                    if smtp_down is not None:
                        errors.append(smtp_down)
                    else:
                        try:
                            mailer.send(job)
                            done.add("email")
                        except (OSError, smtplib.SMTPException) as exc:
                            smtp_down = f"email to {job['owner']}: {exc!r}"
                            errors.append(smtp_down)
                            mailer.close()
                if "hooks" in channels and "hooks" not in done:
                    try:
                        self.hooks.execd_job_ended(job=job)
                        done.add("hooks")
                    except Exception as exc:  # a notifier plugin's failure: retried later
                        errors.append(f"execd_job_ended hook: {exc!r}")
                changes.append(self._outcome(job, done, errors, nothing_to_do=not channels))
        finally:
            keeper.__exit__()
            mailer.close()
            self.store.apply(changes)
        return True

    def _outcome(self, job: Mapping[str, Any], done: set[str], errors: list[str], *,
                 nothing_to_do: bool) -> UpdateOne:
        settings = self.config.notification
        attempts = int(job.get("notification", {}).get("attempts", 0)) + 1
        sets: dict[str, Any] = {"notification.attempts": attempts,
                                "notification.done": sorted(done)}
        if nothing_to_do:
            sets["notification.state"] = "none"
        elif not errors:
            sets["notification.state"] = "sent"
            sets["notification.sent_at"] = utcnow()
        elif attempts >= settings.max_attempts:
            sets["notification.state"] = "failed"
            sets["notification.error"] = "; ".join(errors)
            log.error("notification failed for good after %d attempts: %s", attempts,
                      "; ".join(errors), extra=job_extra(job["_id"]))
        else:
            delay = settings.retry_backoff * 2 ** (attempts - 1)
            sets["notification.state"] = "due"
            sets["notification.error"] = "; ".join(errors)
            sets["notification.next_attempt"] = utcnow() + timedelta(seconds=delay)
            log.warning("notification failed (attempt %d), retrying in %.0fs: %s", attempts,
                        delay, "; ".join(errors), extra=job_extra(job["_id"]))
        return UpdateOne({"_id": job["_id"], "lease.token": job["lease"]["token"]},
                         {"$set": sets, "$unset": {"lease": ""}})
