"""Loading plugins and creating execution systems from the configuration.

Plugins come from three sources, in this order: the built-ins (``execution_engine.builtins``),
the drop-in folders named in ``[plugins]`` (every ``*.py`` file not starting with ``_``), and
installed packages declaring an entry point in the group ``execd.plugins``. Loading checks every
hook implementation against the specs (a misspelled hook is an error) and refuses two plugins that
claim the same system kind or rule name. Any problem raises :class:`PluginError` naming the file
or entry point, so that a reload can keep the previous working set.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import validate
from configobj import ConfigObj

from execution_engine import hookspecs
from execution_engine.config import EngineConfig, SystemSection
from execution_engine.errors import ConfigError, PluginError
from execution_engine.hookspecs import ENTRY_POINT_GROUP, PROJECT, Rule
from execution_engine.systems.base import ExecutionSystem

BUILTIN_SOURCE = "built-in"


@dataclass
class Registry:
    """The loaded plugins: execution system classes by kind and rules by name, with sources."""

    manager: pluggy.PluginManager
    systems: dict[str, type[ExecutionSystem]] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """``"system:<kind>"`` / ``"rule:<name>"`` -> where it came from."""


def load_registry(config: EngineConfig) -> Registry:
    """Load every plugin the configuration names; raises PluginError or ConfigError."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    from execution_engine import builtins

    manager.register(builtins, name="builtin")
    for folder in (*config.plugins.systems, *config.plugins.routing_rules):
        for module in _folder_modules(folder):
            _register(manager, module, f"folder:{module.__file__}")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = entry.load()
        except Exception as exc:  # any import failure of third-party code
            raise PluginError(f"entry point {entry.name} ({entry.value})",
                              f"cannot be loaded: {exc!r}") from exc
        _register(manager, plugin, f"entry point:{entry.name}")
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(_plugin_label(manager, exc.plugin), str(exc)) from exc
    registry = Registry(manager)
    _collect(registry)
    check_config_against(registry, config)
    return registry


def _folder_modules(folder: Path) -> list[ModuleType]:
    if not folder.is_dir():
        raise PluginError(str(folder), "plugin folder does not exist")
    modules = []
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        name = f"execd_plugin_{digest}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PluginError(str(path), "cannot be imported")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # any failure of the plugin's own code
            raise PluginError(str(path), f"fails to import: {exc!r}") from exc
        sys.modules[name] = module
        modules.append(module)
    return modules


def _register(manager: pluggy.PluginManager, plugin: object, label: str) -> None:
    try:
        manager.register(plugin, name=label)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(label, f"cannot be registered: {exc}") from exc


def _plugin_label(manager: pluggy.PluginManager, plugin: object) -> str:
    return manager.get_name(plugin) or repr(plugin)


def _collect(registry: Registry) -> None:
    manager = registry.manager
    for impl in manager.hook.execd_execution_systems.get_hookimpls():
        label = impl.plugin_name
        try:
            classes = impl.function()
        except Exception as exc:  # third-party code
            raise PluginError(label, f"execd_execution_systems failed: {exc!r}") from exc
        for cls in classes or ():
            if not (isinstance(cls, type) and issubclass(cls, ExecutionSystem)) or not cls.kind:
                raise PluginError(label, f"{cls!r} is not an ExecutionSystem with a kind")
            _add(registry, registry.systems, "system", cls.kind, cls, label)
    for impl in manager.hook.execd_routing_rules.get_hookimpls():
        label = impl.plugin_name
        try:
            rules = impl.function()
        except Exception as exc:  # third-party code
            raise PluginError(label, f"execd_routing_rules failed: {exc!r}") from exc
        for name, rule in (rules or {}).items():
            if not callable(rule):
                raise PluginError(label, f"rule {name!r} is not callable")
            _add(registry, registry.rules, "rule", name, rule, label)


def _add(registry: Registry, table: dict[str, Any], what: str, key: str, value: Any,
         label: str) -> None:
    source = BUILTIN_SOURCE if label == "builtin" else label
    if key in table:
        raise PluginError(label, f"{what} {key!r} is already provided by "
                                 f"{registry.sources[f'{what}:{key}']}")
    table[key] = value
    registry.sources[f"{what}:{key}"] = source


def check_config_against(registry: Registry, config: EngineConfig) -> None:
    """Every system's class and every route's rules must exist; raises ConfigError."""
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
    for route in config.routes:
        for rule in route.rules:
            if rule.name not in registry.rules:
                problems.append(f"[routes][{route.name}] rules: unknown rule {rule.name!r} "
                                f"(known: {', '.join(sorted(registry.rules))})")
    if problems:
        raise ConfigError(problems, where)


def system_options(cls: type[ExecutionSystem], section: SystemSection, state_dir: Path
                   ) -> dict[str, Any]:
    """The section's options checked against the class's option spec, with defaults filled in."""
    spec_lines = [f"{key} = {check}" for key, check in cls.option_spec.items()]
    spec_lines.append("status_interval = float(min=0, max=3600, default=0)")
    raw = ConfigObj(dict(section.options), configspec=spec_lines, interpolation=False)
    result = raw.validate(validate.Validator(), preserve_errors=True)
    problems = []
    if result is not True:
        for key, error in result.items():
            if error is not True:
                problems.append(f"[systems][{section.name}] {key}: "
                                f"{error if error is not False else 'missing required value'}")
    known = set(cls.option_spec) | {"status_interval"}
    problems.extend(f"[systems][{section.name}] {key}: unknown option for class {cls.kind!r} "
                    f"(known: {', '.join(sorted(known))})"
                    for key in section.options if key not in known)
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
    return {
        section.name: create_system(registry, section, config.engine.state_dir)
        for section in config.systems
    }


def describe_sources(registry: Registry) -> Mapping[str, str]:
    return dict(registry.sources)
