"""The Building actor: ``to be built`` -> ``to be submitted`` (or ``error``).

For each claimed job the :class:`execution_engine.builder.JobBuilder` checks the document against
the job contract (every problem at once), makes its job directory ``<jobs_dir>/<project>/<job
id>`` and forges its standalone job script; application jobs are also routed here (their system
picks the environment snippet). Building is idempotent, so a job whose builder died is simply
built again.

Job directories are created with mode 0777 minus ``[engine] umask`` (0755 by default), or,
when jobs run as their owners (``[identity]``), given to the job's account with mode 0700
(0750 with ``group_access``); the ``.execd`` sub-directory holds the engine's files (script,
pid, exit code, scheduler log).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from execution_engine.actors.base import Actor
from execution_engine.builder import JobBuilder
from execution_engine.errors import BuildError, InvalidJob, JobError, NoAccount, RoutingError
from execution_engine.job import Job
from execution_engine.logs import job_extra
from execution_engine.reasons import Reason
from execution_engine.routing.router import Router
from execution_engine.states import JobState
from execution_engine.transitions import Transition, end_fields, transition

log = logging.getLogger(__name__)

_REASONS: dict[type[JobError], Reason] = {
    InvalidJob: Reason.INVALID_DOCUMENT,
    NoAccount: Reason.NO_ACCOUNT,
    BuildError: Reason.BUILD_FAILED,
    RoutingError: Reason.ROUTING_FAILED,
}


class BuildingActor(Actor):
    kind: ClassVar[str] = "building"
    _router: Router | None = None

    def setup(self) -> None:
        self.builder = JobBuilder(self.config, self.store, self.router, self.account_of)

    def router(self) -> Router:
        """Made at the first application job (command jobs are routed by the Submit actor)."""
        if self._router is None:
            self._router = Router(self.config, self.registry().rules)
        return self._router

    def work_once(self) -> bool:
        jobs = self.store.claim(
            JobState.TO_BE_BUILT, JobState.BUILDING, owner=self.owner,
            limit=self.config.actors.batch_size, lease_seconds=self.config.monitor.lease_seconds,
        )
        if not jobs:
            # Nothing to build: refuse the new jobs no claim takes (a history that is no list,
            # a document near MongoDB's size limit), which only then are all that is left.
            self.store.refuse_unworkable(by=self.owner)
            return False
        changes = [self.isolated(self.build_one, Job(doc)) for doc in jobs]
        self.store.apply(changes)
        self.hand_on(changes, "submit")
        if self._router is not None:  # application jobs are routed while built
            self.restart_if_rules_hang(self._router.abandoned_rule_threads)
        return True

    def build_one(self, job: Job) -> Transition:
        if job.cancel_requested:
            return transition(job.id, JobState.BUILDING, JobState.KILLED, by=self.owner,
                              message="cancelled before submission", lease_token=job.lease_token,
                              reason=Reason.CANCELLED.value, fields=end_fields(job.notify))
        try:
            built = self.builder.build(job.doc)
        except JobError as exc:
            log.info("cannot build: %s", exc.reason, extra=job_extra(job.id))
            reason = next((r for cls, r in _REASONS.items() if isinstance(exc, cls)),
                          Reason.BUILD_FAILED)
            return transition(job.id, JobState.BUILDING, JobState.ERROR, by=self.owner,
                              message=exc.reason, lease_token=job.lease_token,
                              reason=reason.value,
                              fields={**end_fields(job.notify), "exit_code": None})
        fields: dict[str, Any] = {"job_dir": str(built.job_dir), "built_at": self.now(),
                                  **built.fields}
        if "created_at" not in job.doc:
            fields["created_at"] = fields["built_at"]
        return transition(job.id, JobState.BUILDING, built.state, by=self.owner,
                          lease_token=job.lease_token, message=built.message, fields=fields)
