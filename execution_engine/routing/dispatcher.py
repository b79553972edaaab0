"""Routes and the Dispatcher.

A Route is a list of rules (with their parameters) and an execution system; it passes when ALL
its rules pass, and a route with no rules passes every job. The Dispatcher tries the routes in
the order of the configuration and takes the first that passes. A job no route accepts ends in
``error`` with a message naming each route tried and the rule that refused it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from execution_engine.config import EngineConfig, RuleRef
from execution_engine.errors import RoutingError
from execution_engine.hookspecs import Rule


@dataclass(frozen=True)
class Verdict:
    """What one rule said about one job."""

    rule: str
    passed: bool
    error: str | None = None


@dataclass(frozen=True)
class RouteOutcome:
    route: str
    system: str
    verdicts: tuple[Verdict, ...]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def explain(self) -> str:
        if not self.verdicts:
            return f"route {self.route} -> {self.system}: no rules, accepts every job"
        said = ", ".join(
            f"{v.rule} {'passed' if v.passed else 'refused'}"
            + (f" ({v.error})" if v.error else "") for v in self.verdicts
        )
        return f"route {self.route} -> {self.system}: {said}"


@dataclass(frozen=True)
class Route:
    name: str
    system: str
    rules: tuple[tuple[str, Rule, Mapping[str, Any]], ...] = field(default=())

    def evaluate(self, job: Mapping[str, Any]) -> RouteOutcome:
        """Every rule's verdict, stopping at the first refusal (ALL semantics)."""
        verdicts = []
        for name, rule, params in self.rules:
            try:
                passed = bool(rule(job, **params))
            except Exception as exc:  # a rule plugin's own failure, reported on the job
                verdicts.append(Verdict(name, False, f"raised {exc!r}"))
                break
            verdicts.append(Verdict(name, passed))
            if not passed:
                break
        return RouteOutcome(self.name, self.system, tuple(verdicts))


class Dispatcher:
    """Picks the route (and so the execution system) of each job."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    @classmethod
    def from_config(cls, config: EngineConfig, rules: Mapping[str, Rule]) -> Dispatcher:
        def bind(ref: RuleRef) -> tuple[str, Rule, Mapping[str, Any]]:
            return ref.name, rules[ref.name], dict(ref.params)

        return cls([Route(r.name, r.system, tuple(bind(ref) for ref in r.rules))
                    for r in config.routes])

    def explain(self, job: Mapping[str, Any]) -> list[RouteOutcome]:
        """The verdict of every route, in order, up to and including the first that passes."""
        outcomes = []
        for route in self.routes:
            outcome = route.evaluate(job)
            outcomes.append(outcome)
            if outcome.passed:
                break
        return outcomes

    def route(self, job: Mapping[str, Any]) -> RouteOutcome:
        """The first route that passes; raises RoutingError naming each route tried."""
        outcomes = self.explain(job)
        if outcomes and outcomes[-1].passed:
            return outcomes[-1]
        tried = "; ".join(o.explain() for o in outcomes) or "no routes are configured"
        raise RoutingError(job.get("_id"), f"no route accepts the job: {tried}")
