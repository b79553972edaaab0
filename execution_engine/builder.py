"""Building a job: checking its document, making its directory and forging its script.

The one builder of the Building actor, for every kind of job: a command job is checked against
the job contract and gets its directory and script here; an application job (``app``) is handed
to :class:`execution_engine.apps.builder.AppBuilder` for its inputs, its route and its forged
body, and comes back here for its directory and script. Building is idempotent, so a job whose
builder died is simply built again. The defaults the engine applies (``name``, ``project``) are
written back to the document, so that a query on them finds every job.
"""

from __future__ import annotations

import contextlib
import grp
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from execution_engine import safefs
from execution_engine.config import EngineConfig
from execution_engine.errors import BuildError, InvalidJob
from execution_engine.identity import Account
from execution_engine.job import Job
from execution_engine.jobdoc import check_job
from execution_engine.jobscript import forge_script, job_environment, make_job_dir
from execution_engine.resubmission import set_aside_name
from execution_engine.routing.router import Router
from execution_engine.states import JobState
from execution_engine.store import JobStore


@dataclass(frozen=True)
class Built:
    """What building a job gives the Building actor's transition."""

    job_dir: Path
    state: JobState
    fields: dict[str, Any] = field(default_factory=dict)
    message: str | None = None


class JobBuilder:
    """Builds jobs for one Building actor (not shared across processes)."""

    def __init__(self, config: EngineConfig, store: JobStore, router: Callable[[], Router],
                 account_of: Callable[[Job], Account | None] = lambda job: None) -> None:
        self.config = config
        self.store = store
        self._router = router
        self.account_of = account_of
        """The local account a job runs as (None: the daemon's own); raises NoAccount."""
        self._apps: Any = None
        self._account: Account | None = None
        """The account of the job being built (None: the daemon's): :meth:`write` gives it
        the job directory."""

    def build(self, doc: Mapping[str, Any]) -> Built:
        """Build ``doc``; raises InvalidJob, BuildError or RoutingError (the job then ends in
        ``error`` with the message)."""
        self.check(doc)
        job = Job(doc)
        self._account = account = self.account_of(job)
        if job.is_app:
            from execution_engine.apps.builder import AppBuilder

            if self._apps is None:
                self._apps = AppBuilder(self)
            built: Built = self._apps.build(doc)
        else:
            job_dir = job.job_dir(self.config.engine.jobs_dir)
            self.write(job, job_dir, command=doc["command"])
            # What the script runs, as the engine saw it: a later client edit of ``command``
            # changes nothing that runs, and ``execd show`` tells the two apart.
            built = Built(job_dir, JobState.TO_BE_SUBMITTED,
                          {"built_command": list(doc["command"])})
        fields = {"name": job.name, "project": job.project, **built.fields}
        if account is not None:
            fields["account"] = {"name": account.name, "uid": account.uid}
        return Built(built.job_dir, built.state, fields, built.message)

    @property
    def account_in_build(self) -> Account | None:
        """The account of the job being built (None: the daemon's): its inputs are staged
        as that account would read them."""
        return self._account

    @property
    def router(self) -> Router:
        return self._router()

    def check(self, doc: Mapping[str, Any]) -> None:
        """Raise InvalidJob naming every way ``doc`` breaks the job contract."""
        engine = self.config.engine
        problems = check_job(doc, max_command_bytes=engine.max_command_bytes,
                             max_document_bytes=engine.max_document_bytes)
        if problems:
            raise InvalidJob(doc.get("_id"), "invalid job: " + "; ".join(problems))

    def write(self, job: Job, job_dir: Path, *, command: Sequence[str] = (),
              body: str | None = None, stage: Callable[[Path], None] | None = None) -> None:
        """Make ``job_dir`` (never through a symbolic link), ``stage`` inputs into it, and write
        the job script running ``command`` or ``body``; raises BuildError."""
        jobs_dir = self.config.engine.jobs_dir
        script = forge_script(job_id=job.id_text, job_dir=str(job_dir), command=command,
                              body=body, environment=self.environment(job, job_dir))
        try:
            if job.attempt > 1:
                set_aside(job_dir, jobs_dir, job.attempt - 1)
            make_job_dir(job_dir, jobs_dir, script=script, **self.ownership())
            if stage is not None:
                stage(job_dir)
        except OSError as exc:
            raise BuildError(job.id, f"cannot write the job directory {job_dir}: {exc}"
                             ) from exc

    def ownership(self) -> dict[str, Any]:
        """How the directory of the job being built is owned: by its account, private to it
        (or readable by ``[identity] group_access``); the daemon's, as the umask makes it,
        when the job runs as the daemon."""
        account = self._account
        if account is None:
            return {}
        access = self.config.identity.group_access
        if access:
            return {"owner": (account.uid, grp.getgrnam(access).gr_gid), "mode": 0o750}
        return {"owner": (account.uid, account.gid), "mode": 0o700}

    def environment(self, job: Job, job_dir: Path) -> dict[str, str]:
        """The variables the job script sets for the job."""
        extra = job.doc.get("environment")
        return job_environment(
            job_id=job.id_text, name=job.name, job_dir=str(job_dir), project=job.project,
            owner=job.owner, job_path=self.config.engine.job_path,
            extra=extra if isinstance(extra, Mapping) else None,
        )



def set_aside(job_dir: Path, jobs_dir: Path, attempt: int) -> None:
    """Move the directory of the job's attempt ``attempt`` out of the way of the next one:
    renamed ``<job dir>.attempt-<attempt>`` beside it, relative to its parent's descriptor (a
    link planted at the job directory is renamed itself, never followed). Harmless when done
    already (the next attempt's build is then being made again) or when there is nothing."""
    aside = Path(set_aside_name(str(job_dir), attempt)).name
    try:
        with safefs.opened_dirs(jobs_dir, job_dir.parent.relative_to(jobs_dir).as_posix()
                                ) as parent_fd:
            try:
                os.stat(aside, dir_fd=parent_fd, follow_symlinks=False)
                return  # set aside before: what stands at job_dir is the next attempt's
            except FileNotFoundError:
                pass
            with contextlib.suppress(FileNotFoundError):
                os.rename(job_dir.name, aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except FileNotFoundError:
        return  # no parent folder: the attempt never got a directory


__all__ = ["Built", "JobBuilder"]
