"""execd: a job execution engine daemon.

Clients write job documents into MongoDB; the daemon builds, routes, submits, tracks and notifies
them. The public API for plugin authors is re-exported here.
"""

from __future__ import annotations

from execution_engine.errors import (
    ExecdError,
    NoCapacity,
    SubmissionRejected,
    SystemUnavailable,
)
from execution_engine.hookspecs import execution_system, hookimpl, routing_rule
from execution_engine.states import JobState
from execution_engine.systems.base import (
    ExecutionSystem,
    JobSpec,
    StatusReport,
    Submission,
    ended_report,
)

__version__ = "0.1.0"

__all__ = [
    "ExecdError",
    "ExecutionSystem",
    "JobSpec",
    "JobState",
    "NoCapacity",
    "StatusReport",
    "Submission",
    "SubmissionRejected",
    "SystemUnavailable",
    "__version__",
    "ended_report",
    "execution_system",
    "hookimpl",
    "routing_rule",
]
