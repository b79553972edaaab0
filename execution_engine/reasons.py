"""Why a job ended: the closed list of machine-readable reasons.

Every ended job carries ``reason`` (one of :class:`Reason`) beside ``status_message`` (the same in
words, with the details). Portals branch on ``reason``; people read the message. A plugin that
needs a reason of its own uses a prefixed name (``x-<plugin>-<what>``), which :func:`is_reason`
accepts; the engine's own reasons are exactly the members below (documented in
docs/job-contract.md).
"""

from __future__ import annotations

import re
from enum import StrEnum

from execution_engine.states import JobState


class Reason(StrEnum):
    """Why a job ended. The value is the string stored in the job document."""

    COMPLETED = "completed"
    """The job's program exited with code 0."""
    NONZERO_EXIT = "nonzero_exit"
    """The job's program exited with a code other than 0."""
    SIGNAL = "signal"
    """The job's program was ended by a signal it was not asked to take."""
    COMMAND_NOT_FOUND = "command_not_found"
    """The program could not be found or executed (exit code 126 or 127)."""
    WALLTIME_EXCEEDED = "walltime_exceeded"
    MEMORY_EXCEEDED = "memory_exceeded"
    NODE_FAILURE = "node_failure"
    PREEMPTED = "preempted"
    CANCELLED = "cancelled"
    """The client asked for the job to be cancelled."""
    KILLED_BY_SYSTEM = "killed_by_system"
    """The execution system (or its operator) killed the job."""
    REJECTED = "rejected"
    """The execution system refused the job."""
    SCHEDULER_LOST = "scheduler_lost"
    """The execution system is known to have lost the job (a plugin whose scheduler can prove
    it; a job merely missing from an accounting log has no proven cause: ``unknown``)."""
    BUILD_FAILED = "build_failed"
    """The job directory, its inputs or its script could not be made."""
    ROUTING_FAILED = "routing_failed"
    """No route accepted the job, or a routing rule failed."""
    INVALID_DOCUMENT = "invalid_document"
    """The job document breaks the job contract (the message names the field)."""
    NO_ACCOUNT = "no_account"
    """The owner maps to no local account the job may run as ([identity]; the message names
    the owner and the mapping); nothing ran."""
    INTERNAL_ERROR = "internal_error"
    """The engine failed on this job (the message says how); other jobs go on."""
    UNKNOWN = "unknown"
    """The job ended and the engine cannot tell why."""

    def __str__(self) -> str:
        return self.value


PLUGIN_REASON = re.compile(r"^x-[a-z0-9]+(-[a-z0-9]+)+\Z")
"""A plugin's own reason: ``x-<plugin>-<what>``, lowercase."""


def is_reason(value: object) -> bool:
    """True when ``value`` is a reason the job contract allows."""
    if not isinstance(value, str):
        return False
    return value in _VALUES or PLUGIN_REASON.match(value) is not None


def default_reason(state: JobState) -> str:
    """The reason an end state has when the writer names none."""
    if state is JobState.FINISHED:
        return Reason.COMPLETED.value
    if state is JobState.KILLED:
        return Reason.CANCELLED.value
    return Reason.UNKNOWN.value


def exit_reason(exit_code: int | None) -> str:
    """The reason of a job that ended with ``exit_code`` on its own (no scheduler evidence)."""
    if exit_code == 0:
        return Reason.COMPLETED.value
    if exit_code in (126, 127):
        return Reason.COMMAND_NOT_FOUND.value
    if exit_code is None:
        return Reason.UNKNOWN.value
    if exit_code > 128 or exit_code < 0:
        return Reason.SIGNAL.value
    return Reason.NONZERO_EXIT.value


_VALUES = frozenset(reason.value for reason in Reason)

__all__ = ["PLUGIN_REASON", "Reason", "default_reason", "exit_reason", "is_reason"]
