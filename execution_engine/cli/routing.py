"""Routing commands: ``route`` (which route a job took or would take, and why) and ``systems``
(the execution systems, rules and routes loaded)."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from execution_engine.cli.common import EXIT_FAIL, EXIT_OK, opened_client
from execution_engine.config import EngineConfig


def add_commands(sub: Any) -> None:
    """Add the routing commands to ``sub``, the subparsers of ``execd``."""
    p = sub.add_parser("route", help="which route a job took or would take, and why")
    p.add_argument("job")
    p.set_defaults(func=cmd_route)
    sub.add_parser("systems", help="list execution systems, rules and routes"
                   ).set_defaults(func=cmd_systems)


def cmd_route(config: EngineConfig, args: argparse.Namespace) -> int:
    """Which route the job took (recorded on the job) and which it would take by the current
    configuration, with every route's and every rule's verdict. Exit 0 when a route accepts it.
    """
    # Imported here: plugin loading is only for the commands that need it.
    from execution_engine.plugins import load_registry
    from execution_engine.routing.dispatcher import Dispatcher
    from execution_engine.routing.guard import RuleGuard, RuleTimeout

    with opened_client(config) as client:
        doc = client.job(args.job).document
    job_id = doc["_id"]
    dispatcher = Dispatcher.from_config(config, load_registry(config).rules)
    if doc.get("route"):
        print(f"job {job_id} took route {doc['route']} -> system {doc.get('system')}")
    else:
        print(f"job {job_id} has not been routed yet (state: {doc.get('state')})")
    print(f"routes of {config.describe_source()}, in order (a route passes when ALL its rules "
          "pass; the first that passes is taken):")
    guard = RuleGuard(config.plugins.rule_timeout)
    try:
        decision = guard.decide(dispatcher, doc)
    except RuleTimeout as exc:
        print(f"  {exc}")
        print(f"job {job_id}: routing would end it in error: {exc}")
        return EXIT_FAIL
    finally:
        guard.close()
    for line in dispatcher.describe(decision):
        print(f"  {line}")
    chosen = decision.chosen
    verb = "would take" if not doc.get("route") else "by the current routes would take"
    if chosen is not None:
        print(f"job {job_id} {verb} route {chosen.route} -> {chosen.system}")
        return EXIT_OK
    print(f"job {job_id}: {decision.reason()}")
    return EXIT_FAIL


def cmd_systems(config: EngineConfig, args: argparse.Namespace) -> int:
    """The configured execution systems, the loaded system classes and rules with where each
    comes from (built-in, a folder's file, an entry point), and the routes."""
    from execution_engine.plugins import load_registry
    from execution_engine.routing.context import Capabilities

    registry = load_registry(config)
    print("execution systems (config section: class, capabilities, source):")
    for section in config.systems:
        source = registry.sources.get(f"system:{section.cls}", "?")
        capabilities = Capabilities.from_options(section.options).describe()
        print(f"  {section.name}: {section.cls}; {capabilities}; from {source}")
        for line in _enforcement(registry, config, section):
            print(f"    {line}")
    print("execution system classes loaded:")
    for kind in sorted(registry.systems):
        print(f"  {kind}: {registry.systems[kind].__name__}, from "
              f"{registry.sources[f'system:{kind}']}")
    print("routing rules loaded:")
    for name in sorted(registry.rules):
        print(f"  {name}{_signature(registry.rules[name])}, from "
              f"{registry.sources[f'rule:{name}']}")
    print("routes (in order; ALL rules of a route must pass, the first route that passes wins):")
    for route in config.routes:
        rules = ", ".join(r.name + (f"({', '.join(f'{k}={v!r}' for k, v in r.params.items())})"
                                    if r.params else "") for r in route.rules)
        print(f"  {route.name} -> {route.system}: {rules or 'no rules: every job'}")
    for note in registry.notes:
        print(f"note: {note}")
    return EXIT_OK


def _enforcement(registry: Any, config: EngineConfig, section: Any) -> list[str]:
    """How a system enforces jobs' requirements, for a class that says (``limits(name,
    options)``, as Local does); nothing for the others or when its options are bad."""
    from execution_engine.errors import ConfigError
    from execution_engine.plugins.factory import system_options

    cls = registry.systems.get(section.cls)
    limits = getattr(cls, "limits", None)
    if cls is None or not callable(limits):
        return []
    try:
        return [str(line) for line in limits(section.name, system_options(
            cls, section, config.engine.state_dir))]
    except (ConfigError, OSError):
        return []


def _signature(rule: Any) -> str:
    try:
        params = inspect.signature(rule).parameters.values()
    except (TypeError, ValueError):
        return "(job, ...)"
    return "(" + ", ".join(p.name if p.default is inspect.Parameter.empty
                           else f"{p.name}={p.default!r}" for p in params) + ")"
