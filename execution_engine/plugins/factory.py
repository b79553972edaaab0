"""Execution systems made from the configuration, and the configuration checked against the
loaded plugins (system classes and their options, routes, rules and rule parameters)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import validate
from configobj import ConfigObj

from execution_engine.config import EngineConfig, SystemSection
from execution_engine.errors import ConfigError
from execution_engine.routing.dispatcher import Dispatcher
from execution_engine.systems.base import ExecutionSystem

if TYPE_CHECKING:
    from execution_engine.plugins.loading import Registry


@cache
def common_system_spec() -> dict[str, str]:
    """The options every execution system takes (``status_interval`` and the capabilities used
    for matchmaking), from the ``[systems]`` part of the shipped configspec: one definition."""
    text = resources.files("execution_engine").joinpath("configspec.ini").read_text()
    spec = ConfigObj(text.splitlines(), list_values=False, _inspec=True, interpolation=False)
    many = spec["systems"]["__many__"]
    return {key: str(check) for key, check in many.items()
            if key != "class" and not isinstance(check, Mapping)}


def system_options(cls: type[ExecutionSystem], section: SystemSection, state_dir: Path
                   ) -> dict[str, Any]:
    """The section's options checked against the class's option spec and the options every
    system shares, with defaults filled in; raises ConfigError naming every problem."""
    spec = {**cls.option_spec, **common_system_spec()}
    spec_lines = [f"{key} = {check}" for key, check in spec.items()]
    raw = ConfigObj(dict(section.options), configspec=spec_lines, interpolation=False)
    result = raw.validate(validate.Validator(), preserve_errors=True)
    problems = []
    if result is not True:
        for key, error in result.items():
            if error is not True:
                problems.append(f"[systems][{section.name}] {key}: "
                                f"{error if error is not False else 'missing required value'}")
    problems.extend(f"[systems][{section.name}] {key}: unknown option for class {cls.kind!r} "
                    f"(known: {', '.join(sorted(spec))})"
                    for key in section.options if key not in spec)
    if problems:
        raise ConfigError(problems)
    options = dict(raw)
    options["state_dir"] = str(state_dir / "systems" / section.name)
    return options


def create_system(registry: Registry, section: SystemSection, state_dir: Path
                  ) -> ExecutionSystem:
    """A new instance of the system a config section describes."""
    cls = registry.systems[section.cls]
    return cls(section.name, system_options(cls, section, state_dir))


def create_systems(registry: Registry, config: EngineConfig) -> dict[str, ExecutionSystem]:
    """An instance of every configured system, by section name."""
    return {
        section.name: create_system(registry, section, config.engine.state_dir)
        for section in config.systems
    }


def check_config_against(registry: Registry, config: EngineConfig) -> None:
    """Every system's class and options, every route's rules and their parameters must be good;
    raises ConfigError naming every problem."""
    where = config.describe_source()
    problems = []
    for section in config.systems:
        if section.cls not in registry.systems:
            problems.append(f"[systems][{section.name}] class: unknown execution system class "
                            f"{section.cls!r} (known: {', '.join(sorted(registry.systems))})")
        else:
            try:
                system_options(registry.systems[section.cls], section, Path("/"))
            except ConfigError as exc:
                problems.extend(exc.problems)
    try:
        Dispatcher.from_config(config, registry.rules)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, where)
