"""The Notification actor: tells the owner once that a job ended.

Every ended job carries ``notification.state = "due"`` (or ``"none"`` when the client set
``notify: false``). The actor claims due notifications in batches and, for each job, sends:

* an email to the owner when the owner is an email address and ``[notification] smtp_host`` is
  set (subject and body are templates with ``{job_id}``, ``{name}``, ``{state}``,
  ``{exit_code}``, ``{message}``, ``{job_dir}``, ``{owner}``, ``{project}``);
* the ``execd_job_ended`` plugin hook (webhooks and other notifiers).

When neither applies, the Status actor ends the job with ``notification.state = "none"`` at once
(no claim, no second write), and so does this actor for the few jobs ended elsewhere.

Whom to mail and what (the policy, and the checks that keep a client's values out of the mail's
headers) is :mod:`execution_engine.notifications`. A mail that cannot be made (an owner holding
an ``@`` that is not exactly one address, a sender the mail library refuses) is never sent: the
notification is ``failed`` at once with the reason in ``notification.error``, and so is a job
whose handling raised; the others go on.

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

from execution_engine.actors.base import Actor, LeaseKeeper
from execution_engine.config import NotificationSection
from execution_engine.logs import job_extra
from execution_engine.notifications import (
    DEFAULT_BODY,
    MailError,
    compose,
    is_email,
    notification_channels,
    render,
)
from execution_engine.plugins import load_registry
from execution_engine.store import utcnow
from execution_engine.transitions import NotificationOutcome

log = logging.getLogger(__name__)

CHANNELS = ("email", "hooks")


class Mailer:
    """One SMTP connection for a batch of messages."""

    def __init__(self, settings: NotificationSection) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None
        self.down: str | None = None
        """Why the server failed in this batch (the rest of the batch is put off)."""

    def send(self, message: EmailMessage, to: str) -> None:
        """Send ``message`` to ``to`` alone (the envelope names that one recipient, whatever
        the headers say)."""
        s = self.settings
        if self._smtp is None:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            self._smtp = smtp
        self._smtp.send_message(message, to_addrs=[to])

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
        changes = []
        keeper = LeaseKeeper(self.store, jobs, self.config.monitor.lease_seconds)
        try:
            keeper.__enter__()
            for job in jobs:
                try:
                    changes.append(self.notify_one(job, mailer))
                except Exception as exc:  # one document never stops the others
                    log.exception("cannot notify", extra=job_extra(job.get("_id")))
                    changes.append(self._failed(job, f"internal error while notifying: {exc!r}"))
        finally:
            keeper.__exit__()
            mailer.close()
            self.store.apply(changes)
        return True

    def notify_one(self, job: Mapping[str, Any], mailer: Mailer) -> NotificationOutcome:
        """Tell the owner of one claimed job, through each channel not done yet."""
        settings = self.config.notification
        done = _done(job)
        channels = notification_channels(job, settings, self.hook_count)
        errors: list[str] = []
        if "email" in channels and "email" not in done:
            try:
                message, to = compose(job, settings)
            except MailError as exc:  # the same next time: not retried
                return self._failed(job, f"email: {exc}", done)
            if mailer.down is not None:
                errors.append(mailer.down)
            else:
                try:
                    mailer.send(message, to)
                    done.add("email")
                except (OSError, smtplib.SMTPException) as exc:
                    mailer.down = f"email to {to}: {exc!r}"
                    errors.append(mailer.down)
                    mailer.close()
        if "hooks" in channels and "hooks" not in done:
            try:
                self.hooks.execd_job_ended(job=job)
                done.add("hooks")
            except Exception as exc:  # a notifier plugin's failure: retried later
                errors.append(f"execd_job_ended hook: {exc!r}")
        return self._outcome(job, done, errors, nothing_to_do=not channels)

    def _failed(self, job: Mapping[str, Any], reason: str, done: set[str] | None = None
                ) -> NotificationOutcome:
        """The notification of ``job`` failed for good (retrying would fail alike)."""
        log.error("notification failed: %s", reason, extra=job_extra(job.get("_id")))
        return NotificationOutcome(job["_id"], job["lease"]["token"], {
            "notification.state": "failed",
            "notification.error": reason,
            "notification.attempts": _attempts(job) + 1,
            "notification.done": sorted(done or ()),
        })

    def _outcome(self, job: Mapping[str, Any], done: set[str], errors: list[str], *,
                 nothing_to_do: bool) -> NotificationOutcome:
        settings = self.config.notification
        attempts = _attempts(job) + 1
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
        return NotificationOutcome(job["_id"], job["lease"]["token"], sets)


def _notification(job: Mapping[str, Any]) -> Mapping[str, Any]:
    value = job.get("notification")
    return value if isinstance(value, Mapping) else {}


def _attempts(job: Mapping[str, Any]) -> int:
    """Attempts made so far (a value that is not a small count is taken as none)."""
    attempts = _notification(job).get("attempts", 0)
    ok = isinstance(attempts, int) and not isinstance(attempts, bool) and 0 <= attempts < 1000
    return attempts if ok else 0


def _done(job: Mapping[str, Any]) -> set[str]:
    """The channels already done (only known channel names count)."""
    done = _notification(job).get("done")
    return {c for c in done if c in CHANNELS} if isinstance(done, list) else set()


__all__ = ["CHANNELS", "DEFAULT_BODY", "Mailer", "NotificationActor", "is_email",
           "notification_channels", "render"]
