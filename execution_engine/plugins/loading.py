"""Loading plugins: the built-ins, the drop-in folders' modules, then installed packages'
entry points (group ``execd.plugins``, through pluggy's ``load_setuptools_entrypoints``).

A plugin module implements the hooks of :mod:`execution_engine.hookspecs` with ``@hookimpl``
functions, or marks its rules and system classes with ``@routing_rule`` / ``@execution_system``
(both may be mixed). pluggy validates every implementation against the specs when it is
registered and ``check_pending`` refuses a misspelled hook; two plugins claiming one system kind
or rule name are refused; the configuration is then checked against what was loaded. Any problem
raises :class:`PluginError` (naming the file or entry point) or :class:`ConfigError` (naming the
section, the key and the parameter), so that a reload can keep the previous working set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from execution_engine import builtins, hookspecs
from execution_engine.config import EngineConfig
from execution_engine.errors import PluginError
from execution_engine.hookspecs import (
    ENTRY_POINT_GROUP,
    PROJECT,
    RULE_MARK,
    SYSTEM_MARK,
    Rule,
    hookimpl,
)
from execution_engine.plugins.factory import check_config_against, common_system_spec
from execution_engine.plugins.sources import PluginFile, load_module_source
from execution_engine.systems.base import ExecutionSystem

log = logging.getLogger(__name__)

BUILTIN_SOURCE = "built-in"
_MARKED = " [marked]"
"""Suffix of the name under which a module's marked objects are registered."""


@dataclass
class Registry:
    """The loaded plugins: execution system classes by kind and rules by name, with sources."""

    manager: pluggy.PluginManager
    systems: dict[str, type[ExecutionSystem]] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """``"system:<kind>"`` / ``"rule:<name>"`` -> where it came from: ``built-in``,
    ``folder <path>`` or ``entry point <name> (<module>, <distribution>)``."""
    notes: list[str] = field(default_factory=list)
    """Harmless oddities worth showing an administrator (a plugin module providing nothing)."""


class _Labels:
    """Plugin names in the manager -> the source shown to people."""

    def __init__(self) -> None:
        self.by_name: dict[str, str] = {"builtin": BUILTIN_SOURCE}

    def add(self, name: str, source: str) -> None:
        self.by_name[name] = source

    def source(self, name: str) -> str:
        return self.by_name.get(name.removesuffix(_MARKED), name)


def load_plugins(config: EngineConfig, files: list[PluginFile]) -> Registry:
    """The registry of the built-ins, ``files`` and the entry points, checked against
    ``config``; raises PluginError or ConfigError."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    labels = _Labels()
    notes: list[str] = []
    manager.register(builtins, name="builtin")
    for plugin_file in files:
        module = load_module_source(plugin_file)
        source = f"folder {plugin_file.path}"
        if not _register(manager, labels, module, source, source):
            notes.append(f"{plugin_file.path} provides no rule and no execution system")
    _load_entry_points(manager, labels, notes)
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(labels.source(name), str(exc)) from exc
    registry = Registry(manager, notes=notes)
    _collect(registry, labels)
    for note in notes:
        log.debug("plugins: %s", note)
    check_config_against(registry, config)
    return registry


# ---------------------------------------------------------------------- entry points
def _entry_point_source(entry: metadata.EntryPoint, dist: Any) -> str:
    version = f", {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {entry.name} ({entry.value}{version})"


def _pending_entry_point(manager: pluggy.PluginManager) -> str:
    """The source of the first entry point pluggy has not registered (the one that failed)."""
    for dist in metadata.distributions():
        for entry in dist.entry_points:
            if entry.group == ENTRY_POINT_GROUP and not manager.has_plugin(entry.name) \
                    and not manager.is_blocked(entry.name):
                return _entry_point_source(entry, dist)
    return f"entry point group {ENTRY_POINT_GROUP}"


def _load_entry_points(manager: pluggy.PluginManager, labels: _Labels, notes: list[str]
                       ) -> None:
    """Register every installed entry point of the group, then each module's marked objects."""
    try:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except pluggy.PluginValidationError as exc:
        raise PluginError(_pending_entry_point(manager), f"cannot be registered: {exc}") \
            from exc
    except (Exception, SystemExit) as exc:  # any import failure of third-party code
        raise PluginError(_pending_entry_point(manager), f"cannot be loaded: {exc!r}") from exc
    for plugin, dist in manager.list_plugin_distinfo():
        name = manager.get_name(plugin) or repr(plugin)
        entry = next((e for e in dist.entry_points
                      if e.group == ENTRY_POINT_GROUP and e.name == name), None)
        source = _entry_point_source(entry, dist) if entry is not None else f"entry point {name}"
        labels.add(name, source)
        provided = bool(manager.get_hookcallers(plugin))
        if isinstance(plugin, ModuleType):
            provided = _register_marked(manager, labels, plugin, name, source) or provided
        if not provided:
            notes.append(f"{source} provides no rule and no execution system")


# ---------------------------------------------------------------------- registration
class _MarkedPlugin:
    """The hook implementations of what a module marked with the decorators."""

    def __init__(self, rules: dict[str, Rule], systems: list[type[ExecutionSystem]]) -> None:
        self.rules = rules
        self.systems = systems

    @hookimpl
    def execd_routing_rules(self) -> Mapping[str, Rule]:
        return self.rules

    @hookimpl
    def execd_execution_systems(self) -> list[type[ExecutionSystem]]:
        return self.systems


def marked_in(module: ModuleType) -> tuple[dict[str, Rule], list[type[ExecutionSystem]]]:
    """The rules and system classes ``module`` itself defines and marks with the decorators
    (not those it imports from elsewhere)."""
    rules: dict[str, Rule] = {}
    systems: list[type[ExecutionSystem]] = []
    label = getattr(module, "__file__", None) or module.__name__
    for value in list(vars(module).values()):
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if isinstance(value, type):
            if vars(value).get(SYSTEM_MARK) is True:
                systems.append(value)
            continue
        rule_name = getattr(value, RULE_MARK, None)
        if isinstance(rule_name, str):
            if rule_name in rules and rules[rule_name] is not value:
                raise PluginError(label, f"two rules are marked {rule_name!r}")
            rules[rule_name] = value
    return rules, systems


def _register(manager: pluggy.PluginManager, labels: _Labels, module: ModuleType, name: str,
              source: str) -> bool:
    """Register a plugin module's hook implementations and marked objects; True if it has any.
    """
    _register_one(manager, labels, module, name, source)
    provided = bool(manager.get_hookcallers(module))
    return _register_marked(manager, labels, module, name, source) or provided


def _register_marked(manager: pluggy.PluginManager, labels: _Labels, module: ModuleType,
                     name: str, source: str) -> bool:
    rules, systems = marked_in(module)
    if not (rules or systems):
        return False
    _register_one(manager, labels, _MarkedPlugin(rules, systems), name + _MARKED, source)
    return True


def _register_one(manager: pluggy.PluginManager, labels: _Labels, plugin: object, name: str,
                  source: str) -> None:
    try:
        manager.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(source, f"cannot be registered: {exc}") from exc
    labels.add(name, source)


def _collect(registry: Registry, labels: _Labels) -> None:
    manager = registry.manager
    common = set(common_system_spec())
    for impl in manager.hook.execd_execution_systems.get_hookimpls():
        source = labels.source(impl.plugin_name)
        try:
            classes = impl.function()
        except (Exception, SystemExit) as exc:  # third-party code
            raise PluginError(source, f"execd_execution_systems failed: {exc!r}") from exc
        if not isinstance(classes, list | tuple):
            raise PluginError(source, f"execd_execution_systems returned "
                                      f"{type(classes).__name__}, not a list of classes")
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, ExecutionSystem)) or not cls.kind:
                raise PluginError(source, f"{cls!r} is not an ExecutionSystem with a kind")
            clash = sorted(common & set(cls.option_spec))
            if clash:
                raise PluginError(source, f"{cls.__name__} redefines the options every system "
                                          f"shares: {', '.join(clash)}")
            _add(registry, registry.systems, "system", cls.kind, cls, source=source)
    for impl in manager.hook.execd_routing_rules.get_hookimpls():
        source = labels.source(impl.plugin_name)
        try:
            rules = impl.function()
        except (Exception, SystemExit) as exc:  # third-party code
            raise PluginError(source, f"execd_routing_rules failed: {exc!r}") from exc
        if not isinstance(rules, Mapping):
            raise PluginError(source, f"execd_routing_rules returned {type(rules).__name__}, "
                                      "not a mapping of names to rules")
        for name, rule in rules.items():
            if not isinstance(name, str) or not name:
                raise PluginError(source, f"rule name {name!r} is not a non-empty string")
            if not callable(rule):
                raise PluginError(source, f"rule {name!r} is not callable")
            _add(registry, registry.rules, "rule", name, rule, source=source)


def _add(registry: Registry, table: dict[str, Any], what: str, key: str, value: Any, *,
         source: str) -> None:
    if key in table:
        if table[key] is value:  # one object reached through a hook and a decorator
            return
        raise PluginError(source, f"{what} {key!r} is already provided by "
                                  f"{registry.sources[f'{what}:{key}']}")
    table[key] = value
    registry.sources[f"{what}:{key}"] = source
