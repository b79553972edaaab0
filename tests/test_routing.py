"""Routing as pure functions: built-in rules, parameter binding, routes (ALL), the Dispatcher
(order, default route, no route, failures), matchmaking and the hang guard."""

from __future__ import annotations

import os
import pwd
import re
import textwrap
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from execution_engine.config import EngineConfig, parse_config
from execution_engine.errors import ConfigError, RoutingError
from execution_engine.routing import Answer, Capabilities, RuleParameterError, SystemInfo
from execution_engine.routing.context import freeze
from execution_engine.routing.dispatcher import Dispatcher, Route
from execution_engine.routing.guard import RuleGuard, RuleTimeout
from execution_engine.routing.params import bind_rule
from execution_engine.routing.rules import BUILTIN_RULES, unmet_requirements


def config(text: str) -> EngineConfig:
    return parse_config(textwrap.dedent(text))


def dispatcher(text: str, rules: Mapping[str, Any] | None = None) -> Dispatcher:
    return Dispatcher.from_config(config(text), {**BUILTIN_RULES, **(rules or {})})


def job(**fields: Any) -> dict[str, Any]:
    return {"_id": "j1", "state": "to be submitted", "command": ["prog"], **fields}


def call(name: str, doc: Mapping[str, Any], system: SystemInfo | None = None,
         **params: Any) -> bool:
    bound = bind_rule(name, BUILTIN_RULES[name], params)
    return bool(bound(freeze(doc), system or SystemInfo("s", "local")))


# ---------------------------------------------------------------------- built-in rules
LOCAL_USER = pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.parametrize(("name", "doc", "params", "expected"), [
    ("owner_in", job(owner="bob"), {"owners": "bob"}, True),
    ("owner_in", job(owner="bob"), {"owners": ["alice", "bob"]}, True),
    ("owner_in", job(owner="eve"), {"owners": ["alice", "bob"]}, False),
    ("owner_in", job(), {"owners": "bob"}, False),
    ("owner_is_local", job(owner=LOCAL_USER), {}, True),
    ("owner_is_local", job(owner="no-such-user-xq"), {}, False),
    ("owner_is_local", job(owner=f"{LOCAL_USER}@example.org"), {}, False),
    ("owner_is_local", job(owner=f"{LOCAL_USER}@Example.org"), {"domains": "example.org"}, True),
    ("owner_is_local", job(owner=f"{LOCAL_USER}@other.org"), {"domains": "example.org"}, False),
    ("owner_is_local", job(), {}, False),
    ("project_in", job(project="p1"), {"projects": ["p1", "p2"]}, True),
    ("project_in", job(project="p3"), {"projects": ["p1", "p2"]}, False),
    ("project_in", job(), {"projects": "default"}, True),
    ("name_matches", job(name="blast-123"), {"pattern": "^blast"}, True),
    ("name_matches", job(name="myblast"), {"pattern": "^blast"}, False),
    ("name_matches", job(command=["/usr/bin/blastall", "-p"]), {"pattern": "^blastall$"}, True),
    ("field_equals", job(metadata={"tier": "gold"}), {"field": "metadata.tier",
                                                      "value": "gold"}, True),
    ("field_equals", job(metadata={"tier": "gold"}), {"field": "metadata.tier",
                                                      "value": ["silver", "bronze"]}, False),
    ("field_equals", job(requirements={"cores": 4}), {"field": "requirements.cores",
                                                      "value": "4"}, True),
    ("field_equals", job(notify=False), {"field": "notify", "value": "false"}, True),
    ("field_equals", job(), {"field": "metadata.tier", "value": "gold"}, False),
])
def test_builtin_rules(name: str, doc: dict[str, Any], params: dict[str, Any],
                       expected: bool) -> None:
    assert call(name, doc, **params) is expected


# ---------------------------------------------------------------------- parameters
@pytest.mark.parametrize(("name", "params", "param", "words"), [
    ("owner_in", {}, "owners", "missing"),
    ("owner_in", {"owners": "a", "owner": "b"}, "owner", "unknown"),
    ("owner_in", {"owners": ""}, "owners", "at least one value"),
    ("name_matches", {"pattern": "(unclosed"}, "pattern", "invalid regular expression"),
    ("name_matches", {"pattern": ["a", "b"]}, "pattern", "one value"),
    ("field_equals", {"field": "a..b", "value": "x"}, "field", "dotted field path"),
    ("field_equals", {"field": "a"}, "value", "missing"),
    ("matches_requirements", {"strict": "maybe"}, "strict", "not a boolean"),
    ("matches_requirements", {"system": "x"}, "system", "reserved"),
    ("owner_is_local", {"domain": "x"}, "domain", "unknown"),
])
def test_bad_rule_parameters_are_refused_at_binding(name: str, params: dict[str, Any],
                                                    param: str, words: str) -> None:
    with pytest.raises(RuleParameterError) as caught:
        bind_rule(name, BUILTIN_RULES[name], params)
    assert caught.value.param == param
    assert words in str(caught.value)


def test_plain_function_rules_are_checked_by_signature() -> None:
    def two(job: Mapping[str, Any], a: str, b: str = "x") -> bool:
        return True

    assert bind_rule("two", two, {"a": "1"}).params == {"a": "1"}
    with pytest.raises(RuleParameterError, match="missing"):
        bind_rule("two", two, {"b": "1"})
    with pytest.raises(RuleParameterError, match=r"unknown \(the rule takes: a, b\)"):
        bind_rule("two", two, {"a": "1", "c": "2"})

    def anything(job: Mapping[str, Any], **params: Any) -> bool:
        return True

    assert bind_rule("anything", anything, {"z": "1"}).params == {"z": "1"}

    def no_job() -> bool:
        return True

    with pytest.raises(RuleParameterError, match="job as its first argument"):
        bind_rule("no_job", no_job, {})


def test_check_params_converts_once_and_may_refuse() -> None:
    def rule(job: Mapping[str, Any], limit: int) -> bool:
        return int(job["n"]) < limit

    def check(limit: str) -> dict[str, Any]:
        if not limit.isdigit():
            raise RuleParameterError("limit", "not a number")
        return {"limit": int(limit)}

    rule.check_params = check  # type: ignore[attr-defined]
    bound = bind_rule("rule", rule, {"limit": "10"})
    assert bound.params == {"limit": 10}
    assert bound.raw_params == {"limit": "10"}
    assert bound({"n": 3}, SystemInfo("s", "local")) is True
    with pytest.raises(RuleParameterError, match="limit: not a number"):
        bind_rule("rule", rule, {"limit": "ten"})


def test_name_matches_compiles_its_pattern_once() -> None:
    bound = bind_rule("name_matches", BUILTIN_RULES["name_matches"], {"pattern": "^a"})
    assert isinstance(bound.params["pattern"], re.Pattern)


# ---------------------------------------------------------------------- matchmaking
BIG = Capabilities(max_cores=64, max_memory_mb=262144, max_walltime_s=604800,
                   queues=("long", "short"), software=("blast", "clustalw"))
SMALL = Capabilities(max_cores=2, max_memory_mb=8192, max_walltime_s=3600, queues=("short",),
                     software=("blast",))
SILENT = Capabilities()


@pytest.mark.parametrize(("requirements", "capabilities", "strict", "unmet"), [
    ({}, SMALL, False, []),
    (None, SMALL, True, []),
    ({"memory_mb": 65536}, SMALL, False, ["memory_mb 65536 > max_memory_mb 8192"]),
    ({"memory_mb": 65536}, BIG, False, []),
    ({"cores": 4}, SMALL, False, ["cores 4 > max_cores 2"]),
    ({"cores": 2, "walltime_s": 3600}, SMALL, False, []),
    ({"walltime_s": 7200}, SMALL, False, ["walltime_s 7200 > max_walltime_s 3600"]),
    ({"queue": "long"}, SMALL, False, ["queue long not in queues (short)"]),
    ({"queue": "long"}, BIG, False, []),
    ({"software": ["blast", "clustalw"]}, SMALL, False,
     ["software clustalw not in software (blast)"]),
    ({"software": ["blast", "clustalw"]}, BIG, False, []),
    ({"memory_mb": 65536, "queue": "x", "software": ["emboss"]}, SILENT, False, []),
    ({"memory_mb": 65536}, SILENT, True, ["memory_mb 65536: max_memory_mb not advertised"]),
    ({"queue": "x"}, SILENT, True, ["queue x: no queues advertised"]),
    ({"software": ["emboss"]}, SILENT, True, ["software emboss: no software advertised"]),
])
def test_unmet_requirements(requirements: dict[str, Any] | None, capabilities: Capabilities,
                            strict: bool, unmet: list[str]) -> None:
    assert unmet_requirements(requirements, capabilities, strict) == unmet


MATCHMAKING = """\
    [systems]
        [[small]]
        class = local
        max_cores = 2
        max_memory_mb = 8192
        queues = short
        software = blast
        [[big]]
        class = local
        max_cores = 64
        max_memory_mb = 262144
        queues = short, long
        software = blast, clustalw
        [[anything]]
        class = local
    [routes]
        [[to_small]]
        system = small
        rules = matches_requirements
        [[to_big]]
        system = big
        rules = matches_requirements
        [[last]]
        system = anything
        rules = matches_requirements
            [[[matches_requirements]]]
            strict = true
"""


@pytest.mark.parametrize(("requirements", "route"), [
    ({}, "to_small"),
    ({"memory_mb": 4096}, "to_small"),
    ({"memory_mb": 65536}, "to_big"),  # 64 GB never goes to the system offering 8
    ({"cores": 8, "queue": "long"}, "to_big"),
    ({"software": ["clustalw"]}, "to_big"),
    ({"software": ["emboss"]}, None),  # advertised by none; "last" is strict
    ({"memory_mb": 10 ** 6}, None),
])
def test_matchmaking_routes_by_the_systems_capabilities(requirements: dict[str, Any],
                                                         route: str | None) -> None:
    routes = dispatcher(MATCHMAKING)
    decision = routes.decide(job(requirements=requirements))
    chosen = decision.chosen
    assert (chosen.route if chosen else None) == route
    if route is None:
        assert "does not offer" in decision.reason()


def test_capabilities_come_from_the_system_section() -> None:
    routes = dispatcher(MATCHMAKING)
    big = routes.routes[1].system
    assert big == SystemInfo("big", "local", Capabilities(
        max_cores=64, max_memory_mb=262144, queues=("short", "long"),
        software=("blast", "clustalw")))
    assert routes.routes[2].system.capabilities == Capabilities()


def test_a_bad_capability_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\[systems\]\[s\] max_memory_mb"):
        config("[systems]\n[[s]]\nclass = local\nmax_memory_mb = lots\n")


# ---------------------------------------------------------------------- routes and dispatcher
THREE_ROUTES = """\
    [systems]
        [[a]]
        class = local
        [[b]]
        class = local
        [[c]]
        class = local
    [routes]
        [[first]]
        system = a
        rules = owner_in, project_in
            [[[owner_in]]]
            owners = alice, bob
            [[[project_in]]]
            projects = p1
        [[second]]
        system = b
        rules = owner_in
            [[[owner_in]]]
            owners = bob
        [[default]]
        system = c
"""


@pytest.mark.parametrize(("fields", "route", "system"), [
    ({"owner": "alice", "project": "p1"}, "first", "a"),    # ALL rules pass
    ({"owner": "bob", "project": "p1"}, "first", "a"),      # first matching route wins...
    ({"owner": "bob", "project": "p2"}, "second", "b"),     # ...one refusal is enough (ALL)
    ({"owner": "alice", "project": "p2"}, "default", "c"),  # no rules: accepts every job
    ({}, "default", "c"),
])
def test_all_semantics_order_and_default_route(fields: dict[str, Any], route: str,
                                               system: str) -> None:
    outcome = dispatcher(THREE_ROUTES).route(job(**fields))
    assert (outcome.route, outcome.system) == (route, system)


def test_the_order_of_the_configuration_decides() -> None:
    text = THREE_ROUTES.replace("[[first]]", "[[zz_first]]")
    assert dispatcher(text).route(job(owner="bob", project="p1")).route == "zz_first"
    swapped = dispatcher(THREE_ROUTES)
    swapped.routes = [swapped.routes[1], swapped.routes[0], swapped.routes[2]]
    assert swapped.route(job(owner="bob", project="p1")).route == "second"


def test_a_refusal_stops_the_route_and_later_rules_are_not_evaluated() -> None:
    calls: list[str] = []

    def spy(job: Mapping[str, Any]) -> bool:
        calls.append("spy")
        return True

    routes = dispatcher("""\
        [systems]
            [[a]]
            class = local
        [routes]
            [[r]]
            system = a
            rules = owner_in, spy
                [[[owner_in]]]
                owners = alice
        """, {"spy": spy})
    outcome = routes.explain(job(owner="eve"))[0]
    assert [v.rule for v in outcome.verdicts] == ["owner_in"]
    assert calls == []
    assert "skipped" in "\n".join(routes.describe(routes.decide(job(owner="eve"))))


def test_no_route_accepts_the_job_names_every_route_tried() -> None:
    routes = dispatcher(THREE_ROUTES.replace("[[default]]\n        system = c\n", ""))
    with pytest.raises(RoutingError) as caught:
        routes.route(job(owner="eve", project="p9"))
    message = caught.value.reason
    assert message.startswith("no route accepts the job")
    assert "route first -> a: owner_in refused" in message
    assert "route second -> b: owner_in refused" in message
    assert caught.value.job_id == "j1"


def test_a_raising_rule_fails_the_decision_naming_the_rule_and_route() -> None:
    def boom(job: Mapping[str, Any]) -> bool:
        raise ValueError("bad rule")

    routes = dispatcher("""\
        [systems]
            [[a]]
            class = local
        [routes]
            [[r]]
            system = a
            rules = boom
            [[default]]
            system = a
        """, {"boom": boom})
    decision = routes.decide(job())
    assert decision.chosen is None  # not silently sent down the default route
    assert [o.tried for o in decision.outcomes] == [True, False]
    with pytest.raises(RoutingError, match=r"rule boom of route r failed: raised ValueError"):
        decision.outcome("j1")


def test_rules_get_a_read_only_copy_of_the_job_and_answers_with_reasons() -> None:
    seen: dict[str, Any] = {}

    def meddle(job: Mapping[str, Any], system: SystemInfo) -> Answer:
        seen["system"] = system
        try:
            job["owner"] = "mallory"  # type: ignore[index]
        except TypeError:
            seen["read_only"] = True
        return Answer(False, "not today")

    routes = dispatcher("""\
        [systems]
            [[a]]
            class = local
            max_cores = 3
        [routes]
            [[r]]
            system = a
            rules = meddle
        """, {"meddle": meddle})
    doc = job(owner="alice", requirements={"software": ["x"]})
    outcome = routes.explain(doc)[0]
    assert doc["owner"] == "alice"
    assert seen == {"system": SystemInfo("a", "local", Capabilities(max_cores=3)),
                    "read_only": True}
    assert outcome.verdicts[0].reason == "not today"
    assert "meddle refused (not today)" in outcome.explain()


def test_config_problems_name_route_rule_and_parameter() -> None:
    with pytest.raises(ConfigError) as caught:
        dispatcher("""\
            [systems]
                [[a]]
                class = local
            [routes]
                [[r1]]
                system = a
                rules = name_matches, no_such_rule
                    [[[name_matches]]]
                    pattern = ([
                [[r2]]
                system = a
                rules = owner_in
            """)
    problems = caught.value.problems
    assert any(p.startswith("[routes][r1] rule name_matches: parameter pattern: invalid "
                            "regular expression") for p in problems), problems
    assert any("[routes][r1] rules: unknown rule 'no_such_rule'" in p for p in problems)
    assert any(p.startswith("[routes][r2] rule owner_in: parameter owners: missing")
               for p in problems)


def test_routes_without_rules_need_no_copy_and_no_guard_thread() -> None:
    routes = dispatcher("[systems]\n[[a]]\nclass = local\n")
    assert not routes.has_rules
    guard = RuleGuard(0.01)
    assert guard.decide(routes, job()).chosen is not None
    assert guard._worker is None


def test_route_dataclass_without_rules() -> None:
    route = Route("r", SystemInfo("a", "local"))
    assert route.evaluate(job()).passed
    assert route.evaluate(job()).explain() == "route r -> a: no rules, accepts every job"


# ---------------------------------------------------------------------- the hang guard
HANGING = """\
    [systems]
        [[a]]
        class = local
    [routes]
        [[slow]]
        system = a
        rules = quick, stuck
        [[default]]
        system = a
"""


def test_a_hung_rule_is_abandoned_after_the_timeout_and_the_next_decision_works() -> None:
    release = threading.Event()
    entered = []

    def stuck(job: Mapping[str, Any]) -> bool:
        if job.get("name") == "hang":
            entered.append(threading.current_thread().name)
            release.wait(30)
        return False

    def quick(job: Mapping[str, Any]) -> bool:
        time.sleep(0.15)  # each rule has its own time limit: 0.15 + 0.15 > 0.25 is fine
        return True

    routes = dispatcher(HANGING, {"stuck": stuck, "quick": quick})
    guard = RuleGuard(0.25)
    started = time.monotonic()
    with pytest.raises(RuleTimeout) as caught:
        guard.decide(routes, job(name="hang"))
    assert 0.25 <= time.monotonic() - started < 5
    assert (caught.value.route, caught.value.rule) == ("slow", "stuck")
    assert "rule stuck of route slow did not answer within 0.25s" in str(caught.value)
    assert guard.abandoned == 1
    decision = guard.decide(routes, job(name="fine"))
    assert decision.chosen is not None and decision.chosen.route == "default"
    assert guard.abandoned == 1
    release.set()  # the abandoned thread ends once its rule returns
    hung = next(t for t in threading.enumerate() if t.name == entered[0])
    hung.join(5)
    assert not hung.is_alive()
    guard.close()


def test_an_error_inside_the_dispatcher_reaches_the_caller() -> None:
    routes = dispatcher(HANGING, {"stuck": lambda job: False, "quick": lambda job: True})

    def broken(job: Mapping[str, Any], on_rule: Any = None) -> Any:
        raise KeyError("bug")

    routes.decide = broken  # type: ignore[method-assign]
    with pytest.raises(KeyError):
        RuleGuard(1).decide(routes, job())
