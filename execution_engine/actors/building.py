"""The Building actor: ``to be built`` -> ``to be submitted`` (or ``error``).

For each claimed job: check the document against the job contract (every problem at once), make
its job directory ``<jobs_dir>/<project>/<job id>`` and forge its standalone job script. Building
is idempotent, so a job whose builder died is simply built again. A job that names an
application (``app``) is built by :class:`execution_engine.apps.builder.AppBuilder`.

Job directories are created with mode 0777 minus ``[engine] umask`` (0755 by default); the
``.execd`` sub-directory holds the engine's files (script, pid, exit code, scheduler log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from execution_engine.actors.base import Actor
from execution_engine.apps.builder import AppBuild, AppBuilder
from execution_engine.errors import BuildError, InvalidJob, JobError
from execution_engine.jobdoc import (
    check_job,
    job_dir_for,
    job_id_text,
    job_name,
    job_project,
)
from execution_engine.jobscript import forge_script, job_environment, make_job_dir, write_script
from execution_engine.logs import job_extra
from execution_engine.states import JobState
from execution_engine.store import Transition, end_fields, transition, utcnow
from execution_engine.systems.base import SCRIPT_NAME

log = logging.getLogger(__name__)


class BuildingActor(Actor):
    kind: ClassVar[str] = "building"
    _app_builder: AppBuilder | None = None

    def work_once(self) -> bool:
        jobs = self.store.claim(
            JobState.TO_BE_BUILT, JobState.BUILDING, owner=self.owner,
            limit=self.config.actors.batch_size, lease_seconds=self.config.monitor.lease_seconds,
        )
        if not jobs:
            return False
        changes = [self.build_one(doc) for doc in jobs]
        self.store.apply(changes)
        self.hand_on(changes, "submit")
        if self._app_builder is not None:  # application jobs are routed while built
            self.restart_if_rules_hang(self._app_builder.abandoned_rule_threads)
        return True

    def build_one(self, doc: Mapping[str, Any]) -> Transition:
        token = doc["lease"]["token"]
        notify = doc.get("notify", True) is not False
        if doc.get("cancel_requested") is True:
            return transition(doc["_id"], JobState.BUILDING, JobState.KILLED, by=self.owner,
                              message="cancelled before submission", lease_token=token,
                              fields=end_fields(notify))
        try:
            if doc.get("app") is not None:  # an application job: execution_engine.apps
                built = self.app_builder().build(doc)
            else:
                built = AppBuild(self.build(doc), JobState.TO_BE_SUBMITTED)
        except JobError as exc:
            log.info("cannot build: %s", exc.reason, extra=job_extra(doc["_id"]))
            return transition(doc["_id"], JobState.BUILDING, JobState.ERROR, by=self.owner,
                              message=exc.reason, lease_token=token,
                              fields={**end_fields(notify), "exit_code": None})
        except Exception as exc:  # never let one job stop the others
            log.exception("unexpected failure while building", extra=job_extra(doc["_id"]))
            return transition(doc["_id"], JobState.BUILDING, JobState.ERROR, by=self.owner,
                              message=f"internal error while building: {exc!r}",
                              lease_token=token, fields=end_fields(notify))
        now = utcnow()
        return transition(doc["_id"], JobState.BUILDING, built.state,
                          by=self.owner, lease_token=token, message=built.message,
                          fields={"job_dir": str(built.job_dir), "built_at": now,
                                  "created_at": doc.get("created_at", now), **built.fields})

    def app_builder(self) -> AppBuilder:
        if self._app_builder is None:
            self._app_builder = AppBuilder(self.config, self.store)
        return self._app_builder

    def build(self, doc: Mapping[str, Any]) -> Path:
        """Check the job and write its directory and script; raises InvalidJob or BuildError."""
        engine = self.config.engine
        problems = check_job(doc, max_command_bytes=engine.max_command_bytes,
                             max_document_bytes=engine.max_document_bytes)
        if problems:
            raise InvalidJob(doc.get("_id"), "invalid job: " + "; ".join(problems))
        job_dir = job_dir_for(engine.jobs_dir, doc)
        job_id = job_id_text(doc["_id"])
        try:
            make_job_dir(job_dir)
            script = forge_script(
                job_id=job_id,
                job_dir=str(job_dir),
                command=doc["command"],
                environment=job_environment(
                    job_id=job_id, name=job_name(doc), job_dir=str(job_dir),
                    project=job_project(doc), owner=doc.get("owner"),
                    job_path=engine.job_path, extra=doc.get("environment"),
                ),
            )
            write_script(job_dir / SCRIPT_NAME, script)
        except OSError as exc:
            raise BuildError(doc.get("_id"), f"cannot write the job directory {job_dir}: {exc}"
                             ) from exc
        return job_dir

