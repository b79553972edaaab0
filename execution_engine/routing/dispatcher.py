"""Routes and the Dispatcher.

A Route is a list of rules (with their parameters) and an execution system; it passes when ALL
its rules pass (evaluated in order, stopping at the first refusal), and a route with no rules
passes every job. The Dispatcher tries the routes in the order of the configuration and takes
the first that passes. A job no route accepts ends in ``error`` with a message naming each route
tried and the rule that refused it. A rule that raises stops the decision: the job ends in
``error`` naming the rule and the route (it is not silently sent down a later route).

Routes are built once from the configuration (:meth:`Dispatcher.from_config`), which binds and
checks every rule's parameters: a bad configuration is refused at load time, with every problem
named (route, rule, parameter).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from execution_engine.config import EngineConfig
from execution_engine.errors import ConfigError, RoutingError
from execution_engine.hookspecs import Rule
from execution_engine.routing.context import Capabilities, SystemInfo, freeze
from execution_engine.routing.params import Answer, BoundRule, RuleParameterError, bind_rule

#: Called before each rule is evaluated: ``on_rule(route, rule)`` (the hang guard's clock).
RuleProgress = Callable[[str, str], None]


@dataclass(frozen=True)
class Verdict:
    """What one rule said about one job."""

    rule: str
    passed: bool
    error: str | None = None
    """Set when the rule raised: what it raised."""
    reason: str = ""
    """Why, when the rule said so (an :class:`~.params.Answer`)."""
    call: str = ""
    """The rule with its parameters as configured, e.g. ``owner_in(owners='bob')``."""

    def explain(self) -> str:
        said = "passed" if self.passed else ("raised an error" if self.error else "refused")
        why = self.error or self.reason
        return f"{self.rule} {said}" + (f" ({why})" if why else "")


@dataclass(frozen=True)
class RouteOutcome:
    """What became of one route for one job."""

    route: str
    system: str
    verdicts: tuple[Verdict, ...] = ()
    rules: tuple[str, ...] = ()
    """Every rule of the route, in order (those after a refusal have no verdict)."""
    tried: bool = True
    """False for routes after the decision (an earlier route was taken, or a rule failed)."""

    @property
    def passed(self) -> bool:
        return (self.tried and len(self.verdicts) == len(self.rules)
                and all(v.passed for v in self.verdicts))

    @property
    def failed(self) -> Verdict | None:
        """The verdict of a rule that raised, if one did."""
        return next((v for v in self.verdicts if v.error is not None), None)

    def explain(self) -> str:
        head = f"route {self.route} -> {self.system}"
        if not self.tried:
            return f"{head}: not tried"
        if not self.rules:
            return f"{head}: no rules, accepts every job"
        said = ", ".join(v.explain() for v in self.verdicts)
        return f"{head}: {said}"


@dataclass(frozen=True)
class Decision:
    """The outcome of every route for a job, in configuration order, and what it means."""

    outcomes: tuple[RouteOutcome, ...]

    @property
    def chosen(self) -> RouteOutcome | None:
        return next((o for o in self.outcomes if o.passed), None)

    @property
    def failure(self) -> tuple[RouteOutcome, Verdict] | None:
        """The route and verdict of the rule that raised, if one did."""
        for outcome in self.outcomes:
            failed = outcome.failed
            if failed is not None:
                return outcome, failed
        return None

    def reason(self) -> str:
        """Why no route was taken, in words (for the job's status message)."""
        chosen = self.chosen
        if chosen is not None:
            return f"route {chosen.route} accepts the job"
        failure = self.failure
        if failure is not None:
            outcome, verdict = failure
            return f"rule {verdict.rule} of route {outcome.route} failed: {verdict.error}"
        tried = [o for o in self.outcomes if o.tried]
        if not tried:
            return "no routes are configured"
        return "no route accepts the job: " + "; ".join(o.explain() for o in tried)

    def outcome(self, job_id: object) -> RouteOutcome:
        """The chosen route; raises RoutingError saying why there is none."""
        chosen = self.chosen
        if chosen is None:
            raise RoutingError(job_id, self.reason())
        return chosen


@dataclass(frozen=True)
class Route:
    name: str
    system: SystemInfo
    rules: tuple[BoundRule, ...] = field(default=())

    def evaluate(self, job: Mapping[str, Any], on_rule: RuleProgress | None = None
                 ) -> RouteOutcome:
        """Every rule's verdict, stopping at the first refusal or failure (ALL semantics).

        ``job`` should be read-only (see :func:`~.context.freeze`); a rule that raises gives a
        failed verdict, never an exception.
        """
        verdicts = []
        for bound in self.rules:
            if on_rule is not None:
                on_rule(self.name, bound.name)
            try:
                answer = bound(job, self.system)
            except (Exception, SystemExit) as exc:  # a rule plugin's own failure
                verdicts.append(Verdict(bound.name, False, f"raised {exc!r}",
                                        call=bound.describe()))
                break
            if isinstance(answer, Answer):
                verdict = Verdict(bound.name, answer.passed, reason=answer.reason,
                                  call=bound.describe())
            else:
                verdict = Verdict(bound.name, bool(answer), call=bound.describe())
            verdicts.append(verdict)
            if not verdict.passed:
                break
        return RouteOutcome(self.name, self.system.name, tuple(verdicts),
                            tuple(b.name for b in self.rules))

    def skipped(self) -> RouteOutcome:
        return RouteOutcome(self.name, self.system.name, (), tuple(b.name for b in self.rules),
                            tried=False)


class Dispatcher:
    """Picks the route (and so the execution system) of each job."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def only(self, name: str) -> Dispatcher | None:
        """A dispatcher of the route ``name`` alone (None when there is no such route): a
        resubmission sent to a given route is still decided by that route's rules."""
        routes = [route for route in self.routes if route.name == name]
        return Dispatcher(routes) if routes else None

    @property
    def has_rules(self) -> bool:
        """False when no route has a rule: then no plugin code runs to route a job."""
        return any(route.rules for route in self.routes)

    @classmethod
    def from_config(cls, config: EngineConfig, rules: Mapping[str, Rule]) -> Dispatcher:
        """The configured routes with their rules bound to their parameters.

        Raises ConfigError naming every problem: an unknown system or rule, a rule parameter
        that is missing, unknown or has a bad value.
        """
        problems: list[str] = []
        systems = {}
        for section in config.systems:
            try:
                capabilities = Capabilities.from_options(section.options)
            except (TypeError, ValueError) as exc:
                problems.append(f"[systems][{section.name}] capabilities: {exc}")
                capabilities = Capabilities()
            systems[section.name] = SystemInfo(section.name, section.cls, capabilities)
        routes = []
        for route in config.routes:
            system = systems.get(route.system)
            if system is None:
                problems.append(f"[routes][{route.name}] system: {route.system!r} is not a "
                                f"section of [systems] (known: {', '.join(systems)})")
                continue
            bound = []
            for ref in route.rules:
                rule = rules.get(ref.name)
                if rule is None:
                    problems.append(f"[routes][{route.name}] rules: unknown rule {ref.name!r} "
                                    f"(known: {', '.join(sorted(rules))})")
                    continue
                try:
                    bound.append(bind_rule(ref.name, rule, ref.params))
                except RuleParameterError as exc:
                    problems.append(f"[routes][{route.name}] rule {ref.name}: {exc}")
            routes.append(Route(route.name, system, tuple(bound)))
        if problems:
            raise ConfigError(problems, config.describe_source())
        return cls(routes)

    def decide(self, job: Mapping[str, Any], on_rule: RuleProgress | None = None) -> Decision:
        """Every route's outcome, in order, up to and including the first that passes or fails.

        Rules see a read-only copy of ``job``.
        """
        view = freeze(job) if self.has_rules else job
        outcomes: list[RouteOutcome] = []
        decided = False
        for route in self.routes:
            if decided:
                outcomes.append(route.skipped())
                continue
            outcome = route.evaluate(view, on_rule)
            outcomes.append(outcome)
            decided = outcome.passed or outcome.failed is not None
        return Decision(tuple(outcomes))

    def describe(self, decision: Decision) -> list[str]:
        """A decision in words, one line per route and per rule (what ``execd route`` shows):
        ``*`` the route taken, ``-`` refused, ``!`` a rule failed, blank: not tried."""
        lines = []
        chosen = decision.chosen
        for route, outcome in zip(self.routes, decision.outcomes, strict=True):
            if outcome is chosen:
                mark, state = "*", "TAKEN"
            elif not outcome.tried:
                mark, state = " ", "not tried (decided before it)"
            elif outcome.failed is not None:
                mark, state = "!", "FAILED"
            else:
                mark, state = "-", "refused"
            lines.append(f"{mark} route {outcome.route} -> {outcome.system}: {state}")
            if not route.rules:
                lines.append("    (no rules: accepts every job)")
            for index, bound in enumerate(route.rules):
                if index < len(outcome.verdicts):
                    verdict = outcome.verdicts[index]
                    said = ("passed" if verdict.passed
                            else "raised" if verdict.error else "refused")
                    why = verdict.error or verdict.reason
                    lines.append(f"    {said:8} {bound.describe()}" + (f": {why}" if why else ""))
                elif outcome.tried:
                    lines.append(f"    {'skipped':8} {bound.describe()} (an earlier rule refused)")
                else:
                    lines.append(f"    {'-':8} {bound.describe()}")
        return lines

    def explain(self, job: Mapping[str, Any]) -> list[RouteOutcome]:
        """The outcome of every route tried, in order (the last one decided)."""
        return [o for o in self.decide(job).outcomes if o.tried]

    def route(self, job: Mapping[str, Any]) -> RouteOutcome:
        """The first route that passes; raises RoutingError naming each route tried, or the
        rule that failed."""
        return self.decide(job).outcome(job.get("_id"))
