"""Resubmission: a job whose attempt failed for a listed reason runs again, with more.

A policy belongs to a route (``resubmit_*`` keys of its ``[routes]`` section) and may be
overridden per job (the job's ``resubmit`` field, docs/job-contract.md). When the Status actor
sees an attempt end in ``error`` for one of the policy's reasons and attempts are left, the job
does not end: it goes back to ``to be built`` for its next attempt, with

* its ``requirements`` scaled (``scale``: factors, rounded up) and set (``set``: values),
* its earlier attempt recorded in ``attempts`` (state, reason, message, requirements, route,
  system, usage, and the directory its files were moved to),
* ``next_attempt_at`` (no build claim takes it before), after ``delay_s`` times ``backoff`` to the
  power of the attempts made so far,
* and, when the policy names a ``route``, that route only for the next attempt (its rules
  still decide: a job cannot be sent where the route's rules would not take it).

The job ends once, after its last attempt; the owner is notified once, then. A client may ask
for an ended job to run again (``resubmit_requested``), which follows the same path
(:meth:`execution_engine.store.JobStore.resubmit_requested_jobs`).

This module decides; the Status actor and the store write.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from execution_engine.job import Job
from execution_engine.reasons import Reason, is_reason

ANY = "any"
"""In ``on``: every reason an execution system can end an attempt with, but a kill by the
system's operator (``killed_by_system``, which a policy runs again on only when it names it)."""

NOT_ANY = frozenset({Reason.KILLED_BY_SYSTEM.value})

NEVER = frozenset({Reason.COMPLETED.value, Reason.CANCELLED.value})
"""Reasons no policy resubmits on: a completed job, a job its client cancelled."""

SCALABLE = ("cores", "memory_mb", "walltime_s")
"""Requirements a factor may scale (integers, rounded up)."""
SETTABLE = (*SCALABLE, "queue")
"""Requirements a policy may set."""

MAX_ATTEMPTS = 20
"""The most attempts any policy allows (a job's own ``resubmit`` included)."""

SET_ASIDE = ".attempt-"
"""An earlier attempt's job directory is renamed ``<job dir>.attempt-<n>``."""


@dataclass(frozen=True)
class Policy:
    """When and how a failed attempt runs again. ``attempts`` counts them all (1: never)."""

    on: frozenset[str] = frozenset()
    attempts: int = 1
    delay_s: float = 0.0
    backoff: float = 2.0
    scale: Mapping[str, float] = field(default_factory=dict)
    set_to: Mapping[str, Any] = field(default_factory=dict)
    """Requirements set to a value (the job's ``resubmit.set``)."""
    route: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any], where: str) -> Policy:
        """The policy of a route's ``resubmit_*`` keys (checked by the configspec for type);
        raises ValueError naming ``where`` and the key for a value that is wrong."""
        on = frozenset(options.get("resubmit_on") or ())
        for reason in on:
            if reason != ANY and not is_reason(reason):
                raise ValueError(f"{where} resubmit_on: {reason!r} is not a reason "
                                 "(docs/job-contract.md lists them) nor 'any'")
        return cls(
            on=on,
            attempts=int(options.get("resubmit_attempts", 1)),
            delay_s=float(options.get("resubmit_delay", 0.0)),
            backoff=float(options.get("resubmit_backoff", 2.0)),
            scale=_pairs(options.get("resubmit_scale") or (), SCALABLE, float,
                         f"{where} resubmit_scale"),
            set_to=_pairs(options.get("resubmit_set") or (), SETTABLE, _requirement,
                       f"{where} resubmit_set"),
            route=options.get("resubmit_route") or None,
        )

    def overridden_by(self, job_policy: Mapping[str, Any] | None) -> Policy:
        """This policy with the keys a job's own ``resubmit`` field gives (already checked
        against the job schema)."""
        if not job_policy:
            return self
        changes: dict[str, Any] = {}
        if "on" in job_policy:
            changes["on"] = frozenset(job_policy["on"])
        for key in ("attempts", "delay_s", "backoff", "scale", "route"):
            if key in job_policy:
                changes[key] = job_policy[key]
        if "set" in job_policy:
            changes["set_to"] = job_policy["set"]
        return replace(self, **changes)

    def resubmits(self, reason: str | None, attempt: int) -> bool:
        """True when an attempt (``attempt``, from 1) ending with ``reason`` runs again."""
        if reason is None or reason in NEVER or attempt >= min(self.attempts, MAX_ATTEMPTS):
            return False
        return reason in self.on or (ANY in self.on and reason not in NOT_ANY)

    def delay(self, attempt: int) -> timedelta:
        """How long after attempt ``attempt`` ended the next one may be built."""
        return timedelta(seconds=self.delay_s * self.backoff ** max(0, attempt - 1))

    def next_requirements(self, requirements: Mapping[str, Any] | None) -> dict[str, Any]:
        """The requirements of the next attempt: scaled, then set. A factor scales only a
        requirement the job has (there is nothing to scale otherwise: ``set`` adds one)."""
        new = dict(requirements or {})
        for key, factor in self.scale.items():
            value = new.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                new[key] = max(1, math.ceil(value * factor))
        new.update(self.set_to)
        return new


def next_attempt(doc: Mapping[str, Any], policy: Policy, ended: Mapping[str, Any], *,
                 now: datetime) -> tuple[dict[str, Any], str]:
    """The fields and message of the transition that makes the next attempt of ``doc``, whose
    attempt ended as ``ended`` (its :func:`attempt_record`)."""
    attempt = int(ended["attempt"])
    record = dict(ended)
    if policy.route:
        record["next_route"] = policy.route
    attempts = [*Job(doc).attempts, record][-MAX_ATTEMPTS:]
    requirements = policy.next_requirements(doc.get("requirements"))
    fields = {"attempt": attempt + 1, "attempts": attempts, "requirements": requirements,
              "next_attempt_at": now + policy.delay(attempt)}
    changed = ", ".join(f"{key} {value}" for key, value in sorted(requirements.items())
                        if record["requirements"].get(key) != value)
    message = (f"attempt {attempt} ended ({ended['reason']}): {ended['message'] or 'no message'}"
               f"; attempt {attempt + 1} of {min(policy.attempts, MAX_ATTEMPTS)}"
               + (f" on route {policy.route}" if policy.route else "")
               + (f" with {changed}" if changed else ""))
    return fields, message


REQUEST = "resubmit_requested"
"""The client's request that an ended job run again."""


def requested_attempt(doc: Mapping[str, Any], request: Any, *, now: datetime
                      ) -> tuple[dict[str, Any], str]:
    """The fields and message of the new attempt a client asked for (``request``, the checked
    value of ``resubmit_requested``) on the ended job ``doc``."""
    attempt = Job(doc).attempt
    ended = attempt_record(
        doc, attempt=attempt, state=str(doc.get("engine_state")),
        reason=str(doc.get("reason") or Reason.UNKNOWN.value),
        message=str(doc.get("status_message") or ""), exit_code=doc.get("exit_code"),
        ended_at=doc.get("ended_at") or now, usage=doc.get("usage"),
        job_dir=doc.get("job_dir"))
    requirements = request.get("requirements", {}) if isinstance(request, Mapping) else {}
    policy = Policy(attempts=MAX_ATTEMPTS, set_to=requirements)
    fields, _ = next_attempt(doc, policy, ended, now=now)
    fields["next_attempt_at"] = now
    changed = ", ".join(f"{key} {value}" for key, value in sorted(requirements.items()))
    return fields, (f"resubmitted on request after attempt {attempt} ({ended['state']}): "
                    f"attempt {attempt + 1}" + (f" with {changed}" if changed else ""))


def attempt_record(doc: Mapping[str, Any], *, attempt: int, state: str, reason: str,
                   message: str, exit_code: int | None, ended_at: datetime,
                   usage: Mapping[str, Any] | None, job_dir: str | None) -> dict[str, Any]:
    """The ``attempts`` entry of an ended attempt of ``doc``."""
    record: dict[str, Any] = {
        "attempt": attempt, "state": state, "reason": reason, "message": message,
        "exit_code": exit_code, "ended_at": ended_at,
        "requirements": dict(doc.get("requirements") or {}),
    }
    for key in ("route", "system", "native_id", "submitted_at", "started_at"):
        if doc.get(key) is not None:
            record[key] = doc[key]
    if usage:
        record["usage"] = dict(usage)
    if job_dir:
        record["job_dir"] = set_aside_name(job_dir, attempt)
    return record


def set_aside_name(job_dir: str, attempt: int) -> str:
    """Where attempt ``attempt``'s job directory goes when the next attempt is built."""
    return f"{job_dir}{SET_ASIDE}{attempt}"


def _requirement(value: str) -> Any:
    """A requirement value from the configuration: an integer where it reads as one."""
    try:
        return int(value)
    except ValueError:
        return value


def _pairs(items: Any, allowed: tuple[str, ...], convert: Any, where: str) -> dict[str, Any]:
    """``["walltime_s=2", ...]`` as a dict, each key one of ``allowed``."""
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(f"{where}: {item!r} must be <key>=<value> with key one of "
                             f"{', '.join(allowed)}")
        try:
            converted = convert(value.strip())
        except ValueError:
            raise ValueError(f"{where}: {item!r}: {value.strip()!r} is not a number") from None
        if isinstance(converted, float) and not converted > 0:
            raise ValueError(f"{where}: {item!r}: a factor must be above 0")
        pairs[key] = converted
    return pairs


__all__ = ["ANY", "MAX_ATTEMPTS", "REQUEST", "Policy", "attempt_record", "next_attempt",
           "requested_attempt", "set_aside_name"]
