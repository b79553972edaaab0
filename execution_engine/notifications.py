"""Whom to tell that a job ended, and the mail that tells them, safe whatever the document says.

The job document is written by clients, so every value that reaches a mail is checked:

* ``notify`` must be a boolean: ``false`` turns notifications off, ``true`` (or no ``notify``)
  leaves them on. Any other value (a string such as ``"a@x,b@y"``, a number, an object) is a
  client's mistake and turns them off too: it never names recipients.
* The recipient is the job's ``owner`` when it is exactly one plain email address
  (``local@domain``: a dot-atom local part and a host name, ASCII, no display name, no comment,
  no second address, no whitespace or control character); anything else gets no mail.
* Every templated value (name, state, message, owner, ...) has its control characters (CR, LF,
  NUL, tab, DEL, the C1 range and Unicode line separators) replaced by spaces before it is put
  into the subject or the body, and every header value is stripped of them again, so a value
  can never start a header of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from execution_engine.config import NotificationSection
from execution_engine.errors import ExecdError

DEFAULT_BODY = (
    "Your job {name} ({job_id}) ended: {state}.\n"
    "Exit code: {exit_code}\n"
    "{message}\n"
    "Job directory: {job_dir}\n"
)
MAX_ADDRESS = 254
"""Characters an email address may have at most (RFC 5321 path limit less the brackets)."""

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class MailError(ExecdError, ValueError):
    """A job's mail cannot be made (no valid recipient, a sender the mail library refuses);
    the message says why. Retrying would not help."""


def strip_controls(value: object) -> str:
    """``value`` as text with every control character (line breaks included) a space."""
    return _CONTROLS.sub(" ", str(value))


def recipient(owner: object) -> str | None:
    """``owner`` when it is exactly one plain email address (see the module's notes), else
    None. Checked twice: by a strict pattern, and by the mail library's own parsers, which must
    read back the very same single address."""
    if not isinstance(owner, str) or not 3 <= len(owner) <= MAX_ADDRESS:
        return None
    local, at, domain = owner.rpartition("@")
    if not at or len(local) > 64 or not _LOCAL.fullmatch(local) or \
            not _DOMAIN.fullmatch(domain):
        return None
    try:
        parsed = Address(addr_spec=owner)
    except (HeaderParseError, ValueError, IndexError):
        return None
    if parsed.addr_spec != owner or parsed.display_name:
        return None
    if getaddresses([owner]) != [("", owner)]:
        return None
    return owner


def is_email(address: object) -> bool:
    """Whether ``address`` is exactly one plain email address (mail may be sent to it)."""
    return recipient(address) is not None


def notify_wanted(job: Mapping[str, Any]) -> bool:
    """Whether the job wants to be told it ended: ``notify`` missing or ``true``. Any value
    but a boolean turns it off (a client's mistake never leads to mail)."""
    notify = job.get("notify", True)
    return notify is True


def notification_channels(job: Mapping[str, Any], settings: NotificationSection,
                          hook_count: int) -> list[str]:
    """How the owner of ``job`` is to be told that it ended: ``email`` (an SMTP server, and an
    owner meant as an address: it holds an ``@``), ``hooks`` (plugins implement
    ``execd_job_ended``); empty when nothing applies or ``notify`` is not ``true`` (or missing).

    An owner meant as an address that is not exactly one valid address still gets the
    ``email`` channel: :func:`compose` refuses it, and the notification ends ``failed`` with
    the reason, visible on the job, instead of silently ``none``."""
    if not notify_wanted(job):
        return []
    channels = []
    owner = job.get("owner")
    if settings.smtp_host and isinstance(owner, str) and "@" in owner:
        channels.append("email")
    if hook_count:
        channels.append("hooks")
    return channels


class _Fields(dict[str, Any]):
    """Template values; an unknown ``{field}`` in a template stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, job: Mapping[str, Any]) -> str:
    """``template`` with the job's fields, each stripped of control characters."""
    fields = _Fields(
        job_id=job["_id"], name=job.get("name") or job["_id"],
        state=job.get("state", ""), exit_code=job.get("exit_code"),
        message=job.get("status_message", ""), job_dir=job.get("job_dir", ""),
        owner=job.get("owner", ""), project=job.get("project", "default"),
    )
    safe = _Fields({key: strip_controls(value) for key, value in fields.items()})
    try:
        return template.format_map(safe)
    except (ValueError, IndexError, KeyError, AttributeError, TypeError):
        return template  # a malformed template: sent as written


def compose(job: Mapping[str, Any], settings: NotificationSection) -> tuple[EmailMessage, str]:
    """The mail telling the owner of ``job`` that it ended, and its one recipient. Raises
    MailError when it cannot be made."""
    to = recipient(job.get("owner"))
    if to is None:
        raise MailError(f"owner {strip_controls(repr(job.get('owner')))[:120]} is not one "
                        "email address")
    message = EmailMessage()
    try:
        message["From"] = strip_controls(settings.sender)
        message["To"] = to
        message["Subject"] = strip_controls(render(settings.subject, job))
        message["X-Execd-Job"] = strip_controls(job["_id"])
        message.set_content(render(settings.body or DEFAULT_BODY, job))
    except (ValueError, TypeError, IndexError, HeaderParseError) as exc:
        raise MailError(f"the mail cannot be made: {exc}") from exc
    return message, to


__all__ = ["DEFAULT_BODY", "MailError", "compose", "is_email", "notification_channels",
           "notify_wanted", "recipient", "render", "strip_controls"]
