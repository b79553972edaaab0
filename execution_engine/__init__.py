"""execd: a job execution engine daemon.

Clients write job documents into MongoDB; the daemon builds, routes, submits, tracks and notifies
them. The public API for plugin authors is re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from execution_engine.client import Client, Job

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``Client`` and ``Job``, the client library (docs/client.md), imported on first use:
    plugins importing this package do not load it."""
    if name in ("Client", "Job"):
        from execution_engine import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Client",
    "ExecdError",
    "ExecutionSystem",
    "Job",
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
