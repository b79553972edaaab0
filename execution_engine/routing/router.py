"""Picking a job's route and execution system: the one router of the Building and Submit actors.

Command jobs are routed by the Submit actor; application jobs while they are built (their
execution system chooses the environment snippet of their script), by the Building actor. Both
ask a :class:`Router`, which runs the Dispatcher's rules under a :class:`RuleGuard` (a rule that
raises or hangs ends that job in ``error`` naming it; other jobs go on) and turns every way of
not having a route into :class:`RoutingError`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from execution_engine.config import EngineConfig
from execution_engine.errors import RoutingError
from execution_engine.hookspecs import Rule
from execution_engine.job import Job
from execution_engine.logs import job_extra
from execution_engine.routing.dispatcher import Dispatcher
from execution_engine.routing.guard import RuleGuard, RuleTimeout

log = logging.getLogger(__name__)


class Router:
    """Routes jobs for one actor process (not shared across processes)."""

    def __init__(self, config: EngineConfig, rules: Mapping[str, Rule]) -> None:
        self.dispatcher = Dispatcher.from_config(config, rules)
        self.guard = RuleGuard(config.plugins.rule_timeout)
        self._only: dict[str, Dispatcher | None] = {}

    @property
    def abandoned_rule_threads(self) -> int:
        """Rule threads abandoned because their rule hung (see RuleGuard)."""
        return self.guard.abandoned

    def route(self, job: Mapping[str, Any], systems: Collection[str] | None = None
              ) -> tuple[str, str]:
        """The (route, system) the rules give ``job``; raises RoutingError saying why there is
        none, when a rule failed or hung, or when the route names a system not in ``systems``
        (when given)."""
        job_id = job.get("_id")
        dispatcher = self.dispatcher
        only = Job(job).next_route  # a resubmission may name the route of its attempt
        if only is not None:
            if only not in self._only:
                self._only[only] = self.dispatcher.only(only)
            named = self._only[only]
            if named is None:
                raise RoutingError(job_id, f"route {only}, named for attempt "
                                           f"{Job(job).attempt} by its resubmission policy, "
                                           "is not configured")
            dispatcher = named
        try:
            decision = self.guard.decide(dispatcher, job)
        except RuleTimeout as exc:
            log.error("%s", exc, extra=job_extra(job_id))
            raise RoutingError(job_id, str(exc)) from exc
        failure = decision.failure
        if failure is not None:
            log.error("routing rule %s of route %s failed: %s", failure[1].rule,
                      failure[0].route, failure[1].error, extra=job_extra(job_id))
        outcome = decision.outcome(job_id)
        if systems is not None and outcome.system not in systems:
            raise RoutingError(job_id, f"route {outcome.route} names unknown execution "
                                       f"system {outcome.system}")
        return outcome.route, outcome.system

    def close(self) -> None:
        self.guard.close()


__all__ = ["Router"]
