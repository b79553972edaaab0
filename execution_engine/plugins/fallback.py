"""Which plugin set a process runs: the one in its folders now, or its daemon's last good one.

Who loads plugins says so with a :class:`LoaderRole` (passed to :func:`load_registry`, or
declared once for the process with :func:`declare_role`):

* a **client** (``execd reload``'s check, ``execd route``, ``execd systems``...) always reports a
  set that fails to load;
* the **master** of daemon ``instance`` reports the failure too (a reload is then refused), and
  records a set that loads as the daemon's last good set;
* a **worker** of daemon ``instance`` (the Monitor and the actors, which load plugins whenever
  they start) records a set that loads, and when the set fails to load runs the last good set
  recorded by the same daemon instead (logged as an error): an actor restarting after a broken
  file was dropped into a folder, with no reload done or with the reload refused, keeps the
  working set instead of failing in a loop.

The record lives under ``<state_dir>/plugins/``, one per set of folders, and names the daemon
instance that wrote it: a set recorded by an earlier daemon is never used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from execution_engine.config import EngineConfig
from execution_engine.errors import ConfigError, PluginError
from execution_engine.plugins.loading import Registry, load_plugins
from execution_engine.plugins.sources import PluginFile, read_plugin_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderRole:
    """Who loads plugins (see the module)."""

    kind: Literal["client", "master", "worker"]
    daemon: str = ""
    """The daemon instance id (``<host>/<uuid>``) of a master or worker."""

    @classmethod
    def client(cls) -> LoaderRole:
        return cls("client")

    @classmethod
    def master(cls, instance: str) -> LoaderRole:
        return cls("master", instance)

    @classmethod
    def worker(cls, instance: str) -> LoaderRole:
        return cls("worker", instance)


_declared = LoaderRole.client()


def declare_role(role: LoaderRole) -> None:
    """Set the role of this process's loads that name none (a daemon process, once, at start:
    code it runs, such as an actor's setup, then loads as that role)."""
    global _declared  # noqa: PLW0603 - one role per process, declared as it starts
    _declared = role


def load_registry(config: EngineConfig, role: LoaderRole | None = None) -> Registry:
    """Load every plugin the configuration names as ``role`` (default: the role declared for
    this process, a client unless declared); raises PluginError or ConfigError."""
    role = role or _declared
    try:
        files = read_plugin_files(config)
        registry = load_plugins(config, files)
    except (PluginError, ConfigError) as exc:
        if role.kind != "worker":
            raise
        last = last_good(config, role.daemon)
        if last is None:
            raise
        log.error("plugins: %s; using the last plugin set that loaded in this daemon until "
                  "this is fixed (then run 'execd reload')", exc)
        registry = load_plugins(config, last)
        registry.notes.append(f"using the last plugin set that loaded, because: {exc}")
        return registry
    if role.kind != "client":
        remember(config, role.daemon, files)
    return registry


def _record_path(config: EngineConfig) -> Path:
    folders = [str(f) for f in (*config.plugins.systems, *config.plugins.routing_rules)]
    digest = hashlib.sha1("\0".join(folders).encode()).hexdigest()[:12]
    return config.engine.state_dir / "plugins" / f"last-good-{digest}.json"


def remember(config: EngineConfig, daemon: str, files: list[PluginFile]) -> None:
    """Record ``files`` as daemon ``daemon``'s last plugin set that loaded (best effort)."""
    if not daemon or last_good(config, daemon) == files:
        return
    record = {"daemon": daemon, "files": [
        {"path": str(f.path), "module": f.module,
         "source": base64.b64encode(f.source).decode()} for f in files]}
    path = _record_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    except OSError as exc:
        log.debug("cannot record the plugin set in %s: %s", path, exc)


def last_good(config: EngineConfig, daemon: str) -> list[PluginFile] | None:
    """The last plugin set that loaded in daemon ``daemon``, if it recorded one."""
    try:
        record = json.loads(_record_path(config).read_text())
        if not daemon or record["daemon"] != daemon:
            return None  # recorded by another daemon: not this one's working set
        return [PluginFile(Path(f["path"]), f["module"], base64.b64decode(f["source"]))
                for f in record["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
