"""A typed, read-only view of a job document, as the engine reads it.

Clients write job documents (docs/job-contract.md); anything may be in them. The view answers the
questions the engine asks of a job with the contract's strict reading, in one place: a request
counts only when it is exactly ``true``, a field of the wrong type reads as absent, and the job's
directory is always the one the engine computes, never a path read from the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from execution_engine.jobdoc import job_id_text, job_name, job_project, request_problems
from execution_engine.states import JobState, parse_state
from execution_engine.systems.base import JobSpec, Resources

SUBJOBS_DIR = "subjobs"
"""Sub-directory of a split master's job directory that holds its subjobs' directories."""


class Job:
    """The engine's reading of one job document (``doc`` stays available for the rest)."""

    __slots__ = ("doc",)

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc

    # ------------------------------------------------------------------ identity
    @property
    def id(self) -> Any:
        return self.doc["_id"]

    @property
    def id_text(self) -> str:
        return job_id_text(self.doc["_id"])

    @property
    def name(self) -> str:
        return job_name(self.doc)

    @property
    def project(self) -> str:
        return job_project(self.doc)

    @property
    def owner(self) -> str | None:
        owner = self.doc.get("owner")
        return owner if isinstance(owner, str) else None

    @property
    def parent(self) -> Any:
        """The split master of a subjob, else None."""
        return self.doc.get("parent")

    @property
    def index(self) -> int | None:
        index = self.doc.get("index")
        return index if isinstance(index, int) and not isinstance(index, bool) else None

    @property
    def is_app(self) -> bool:
        return self.doc.get("app") is not None

    # ------------------------------------------------------------------ engine state
    @property
    def state(self) -> JobState | None:
        """The state as stored (None when it is not a job state)."""
        return parse_state(self.doc.get("state"))

    @property
    def engine_state(self) -> JobState | None:
        """The state the engine last wrote (None for a job the engine has not touched)."""
        return parse_state(self.doc.get("engine_state"))

    @property
    def lease_token(self) -> str:
        """The token of the lease under which this document was claimed."""
        token: str = self.doc["lease"]["token"]
        return token

    @property
    def route(self) -> str | None:
        return _text(self.doc.get("route"))

    @property
    def system(self) -> str | None:
        return _text(self.doc.get("system"))

    @property
    def native_id(self) -> str | None:
        return _text(self.doc.get("native_id"))

    @property
    def started_at(self) -> datetime | None:
        value = self.doc.get("started_at")
        return value if isinstance(value, datetime) else None

    @property
    def output_patterns(self) -> list[str] | None:
        """The outputs an application job declares (None for a plain job)."""
        patterns = self.doc.get("output_patterns")
        return [p for p in patterns if isinstance(p, str)] if isinstance(patterns, list) else None

    @property
    def submission_in_doubt(self) -> bool:
        """A submission may have reached the system: look it up before submitting again."""
        return _section(self.doc, "submission").get("recover") is True

    @property
    def kill_term_at(self) -> datetime | None:
        value = _section(self.doc, "kill").get("term_at")
        return value if isinstance(value, datetime) else None

    @property
    def kill_sent(self) -> bool:
        return bool(_section(self.doc, "kill").get("kill_at"))

    @property
    def hold_sent(self) -> bool:
        return _section(self.doc, "hold").get("held") is True

    # ------------------------------------------------------------------ attempts
    @property
    def attempt(self) -> int:
        """Which run of the job this is, from 1 (a resubmission is a new attempt)."""
        value = self.doc.get("attempt")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else 1

    @property
    def attempts(self) -> list[Mapping[str, Any]]:
        """The earlier attempts, oldest first (see execution_engine.resubmission)."""
        value = self.doc.get("attempts")
        return [a for a in value if isinstance(a, Mapping)] if isinstance(value, list) else []

    @property
    def next_route(self) -> str | None:
        """The route a resubmission policy named for this attempt (its rules still apply)."""
        if self.attempt < 2 or not self.attempts:
            return None
        return _text(self.attempts[-1].get("next_route"))

    @property
    def resubmit_policy(self) -> Mapping[str, Any] | None:
        """The job's own ``resubmit`` overrides of its route's policy; None when it breaks the
        job contract (a client may rewrite it after the job was checked at its build)."""
        value = _mapping(self.doc.get("resubmit"))
        return value if value is not None and not request_problems("resubmit", value) else None

    # ------------------------------------------------------------------ client requests
    @property
    def cancel_requested(self) -> bool:
        return self.doc.get("cancel_requested") is True

    @property
    def hold_requested(self) -> bool:
        return self.doc.get("hold_requested") is True

    @property
    def notify(self) -> bool:
        """Whether the owner wants to hear of the end (``notify: false`` only turns it off)."""
        return self.doc.get("notify", True) is not False

    # ------------------------------------------------------------------ where it runs
    def job_dir(self, jobs_root: Path) -> Path:
        """Where the job's directory is, computed from its id (and for a subjob its master's id
        and index): ``<jobs_dir>/<project>/<id>``, or ``.../<master id>/subjobs/<index>``."""
        parent, index = self.parent, self.index
        if parent is not None and index is not None:
            return jobs_root / self.project / job_id_text(parent) / SUBJOBS_DIR / str(index)
        return jobs_root / self.project / self.id_text

    def spec(self, jobs_root: Path) -> JobSpec:
        """The :class:`JobSpec` an execution system is given for this built job."""
        return JobSpec(
            job_id=self.id_text,
            name=self.name,
            job_dir=self.job_dir(jobs_root),
            owner=self.owner,
            project=self.project,
            resources=Resources.from_document(_mapping(self.doc.get("requirements"))),
            native_id=self.native_id,
            attempt=self.attempt,
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, Mapping) else {}


__all__ = ["SUBJOBS_DIR", "Job"]
