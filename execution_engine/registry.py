"""Loading plugins and creating execution systems from the configuration.

Plugins come from three sources, in this order: the built-ins (``execution_engine.builtins``),
the drop-in folders named in ``[plugins]`` (every ``*.py`` file not starting with ``_``), and
installed packages declaring an entry point in the group ``execd.plugins``. A plugin module
implements the hooks of :mod:`execution_engine.hookspecs` with ``@hookimpl`` functions, or marks
its rules and system classes with ``@routing_rule`` / ``@execution_system`` (both may be mixed).

Loading checks every hook implementation against the specs (a misspelled hook is an error),
refuses two plugins that claim the same system kind or rule name, and checks the configuration
against what was loaded: system classes and their options, routes, rules and rule parameters.
Any problem raises :class:`PluginError` (naming the file or entry point) or :class:`ConfigError`
(naming the section, the key and the parameter), so that a reload can keep the previous working
set.

Folder modules are executed from their source every time they are loaded (no bytecode cache is
read or written, nothing is reused from ``sys.modules``): a module changed since the last load is
what the next load runs, even when it was rewritten within the same second at the same size.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import validate
from configobj import ConfigObj

from execution_engine import builtins, hookspecs
from execution_engine.config import EngineConfig, SystemSection
from execution_engine.errors import ConfigError, PluginError
from execution_engine.hookspecs import (
    ENTRY_POINT_GROUP,
    PROJECT,
    RULE_MARK,
    SYSTEM_MARK,
    Rule,
    hookimpl,
)
from execution_engine.proc import process_start_time
from execution_engine.routing.dispatcher import Dispatcher
from execution_engine.systems.base import ExecutionSystem

log = logging.getLogger(__name__)

BUILTIN_SOURCE = "built-in"


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
        return self.by_name.get(name, name)


def load_registry(config: EngineConfig) -> Registry:
    """Load every plugin the configuration names; raises PluginError or ConfigError.

    Folder modules are read afresh from their folders. In the daemon's worker processes (the
    Monitor and the actors, which load plugins whenever they start), a set that fails to load
    is replaced by the last set that loaded in this daemon (logged as an error): an actor
    restarting after a broken file was dropped into a folder, with no reload done or with the
    reload refused, keeps the working set instead of failing in a loop. The master and client
    commands (``execd reload``, ``execd route``, ``execd systems``) always report the failure.
    """
    role = _role(config)
    try:
        files = read_plugin_files(config)
        registry = _load(config, files)
    except (PluginError, ConfigError) as exc:
        if role != "worker":
            raise
        last = _last_good(config)
        if last is None:
            raise
        log.error("plugins: %s; using the last plugin set that loaded in this daemon until "
                  "this is fixed (then run 'execd reload')", exc)
        registry = _load(config, last)
        registry.notes.append(f"using the last plugin set that loaded, because: {exc}")
        return registry
    if role != "client":
        _remember(config, files)
    return registry


def _load(config: EngineConfig, files: list[PluginFile]) -> Registry:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    labels = _Labels()
    notes: list[str] = []
    manager.register(builtins, name="builtin")
    for plugin_file in files:
        module = load_module_source(plugin_file)
        source = f"folder {plugin_file.path}"
        if not _register_module(manager, labels, module, source):
            notes.append(f"{plugin_file.path} provides no rule and no execution system")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = f", {entry.dist.name} {entry.dist.version}" if entry.dist is not None else ""
        source = f"entry point {entry.name} ({entry.value}{dist})"
        try:
            plugin = entry.load()
        except (Exception, SystemExit) as exc:  # any import failure of third-party code
            raise PluginError(source, f"cannot be loaded: {exc!r}") from exc
        if isinstance(plugin, ModuleType):
            provided = _register_module(manager, labels, plugin, source)
        else:
            provided = _register(manager, labels, plugin, source)
        if not provided:
            notes.append(f"{source} provides no rule and no execution system")
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


# ---------------------------------------------------------------------- folder modules
@dataclass(frozen=True)
class PluginFile:
    """One module of a drop-in folder, as read: what is executed is exactly this source."""

    path: Path
    module: str
    """Its name in ``sys.modules``: unique per folder and file."""
    source: bytes


def _unique_folders(folders: tuple[Path, ...]) -> list[Path]:
    """The folders in order, each once (one folder may serve both kinds of plugin)."""
    seen: set[Path] = set()
    unique = []
    for folder in folders:
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(folder)
    return unique


def read_plugin_files(config: EngineConfig) -> list[PluginFile]:
    """Every module of the configured folders (``*.py`` not starting with ``_``), read now."""
    files = []
    for folder in _unique_folders((*config.plugins.systems, *config.plugins.routing_rules)):
        if not folder.is_dir():
            raise PluginError(str(folder), "plugin folder does not exist")
        digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            try:
                source = path.read_bytes()
            except OSError as exc:
                raise PluginError(str(path), f"cannot be read: {exc}") from exc
            files.append(PluginFile(path, f"execd_plugin_{digest}_{path.stem}", source))
    return files


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Runs a plugin module from the source read by :func:`read_plugin_files`, always: no
    ``__pycache__`` is read or written.

    A bytecode cache is trusted on the source's mtime (whole seconds) and size, so a plugin
    rewritten within the same second at the same size would silently keep its old code; and
    writing caches into an administrator's plugin folder is not ours to do.
    """

    def __init__(self, plugin_file: PluginFile) -> None:
        super().__init__(plugin_file.module, str(plugin_file.path))
        self.plugin_file = plugin_file

    def get_data(self, path: str) -> bytes:
        if path == str(self.plugin_file.path):
            return self.plugin_file.source
        return super().get_data(path)

    def path_stats(self, path: str) -> Mapping[str, Any]:
        raise OSError("plugin modules are always compiled from source")

    def set_data(self, path: str, data: Any, *, _mode: int = 0o666) -> None:
        return None


def load_module_source(plugin_file: PluginFile) -> ModuleType:
    """Execute a plugin file's source as a new module; raises PluginError naming the file.

    The module is in ``sys.modules`` while it runs (dataclasses and pickling look it up there)
    and replaces any earlier module of that name only once it ran without error.
    """
    loader = _SourceLoader(plugin_file)
    name, path = plugin_file.module, plugin_file.path
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise PluginError(str(path), "cannot be imported")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # any failure of the plugin's own code
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise PluginError(str(path), f"fails to import: {exc!r}") from exc
    return module


# ---------------------------------------------------------------------- the last working set
def _master(config: EngineConfig) -> tuple[int, int] | None:
    """The running daemon's master: (pid, start time), from the pid file and ``/proc``."""
    try:
        pid = int(config.engine.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    start = process_start_time(pid)
    return None if start is None else (pid, start)


def _role(config: EngineConfig) -> str:
    """``master`` (holds the pid file), ``worker`` (a process it spawned) or ``client``."""
    master = _master(config)
    if master is None:
        return "client"
    if master[0] == os.getpid():
        return "master"
    return "worker" if multiprocessing.parent_process() is not None else "client"


def _last_good_path(config: EngineConfig) -> Path:
    folders = [str(f) for f in (*config.plugins.systems, *config.plugins.routing_rules)]
    digest = hashlib.sha1("\0".join(folders).encode()).hexdigest()[:12]
    return config.engine.state_dir / "plugins" / f"last-good-{digest}.json"


def _remember(config: EngineConfig, files: list[PluginFile]) -> None:
    """Record ``files`` as this daemon's last plugin set that loaded (best effort)."""
    master = _master(config)
    if master is None or _last_good(config) == files:
        return
    record = {"master": list(master), "files": [
        {"path": str(f.path), "module": f.module,
         "source": base64.b64encode(f.source).decode()} for f in files]}
    path = _last_good_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    except OSError as exc:
        log.debug("cannot record the plugin set in %s: %s", path, exc)


def _last_good(config: EngineConfig) -> list[PluginFile] | None:
    """The last plugin set that loaded in the running daemon, if any was recorded."""
    try:
        record = json.loads(_last_good_path(config).read_text())
        if tuple(record["master"]) != _master(config):
            return None  # recorded by an earlier daemon: not this one's working set
        return [PluginFile(Path(f["path"]), f["module"], base64.b64decode(f["source"]))
                for f in record["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def _register_module(manager: pluggy.PluginManager, labels: _Labels, module: ModuleType,
                     source: str) -> bool:
    """Register a plugin module's hook implementations and marked objects; True if it has any.
    """
    provided = _register(manager, labels, module, source)
    rules, systems = marked_in(module)
    if rules or systems:
        _register(manager, labels, _MarkedPlugin(rules, systems), source, suffix=" [marked]")
        provided = True
    return provided


def _register(manager: pluggy.PluginManager, labels: _Labels, plugin: object, source: str,
              suffix: str = "") -> bool:
    name = source + suffix
    try:
        manager.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(source, f"cannot be registered: {exc}") from exc
    labels.add(name, source)
    return bool(manager.get_hookcallers(plugin))


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


# ---------------------------------------------------------------------- configuration checks
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
    system shares, with defaults filled in."""
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
    return {
        section.name: create_system(registry, section, config.engine.state_dir)
        for section in config.systems
    }


def describe_sources(registry: Registry) -> Mapping[str, str]:
    return dict(registry.sources)
