"""Drop-in folder modules: read once, executed from exactly what was read.

Every ``*.py`` file of the folders named in ``[plugins]`` (not starting with ``_``) is a plugin
module. Folder modules are executed from their source every time they are loaded (no bytecode
cache is read or written, nothing is reused from ``sys.modules``): a module changed since the
last load is what the next load runs, even when it was rewritten within the same second at the
same size.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from execution_engine.config import EngineConfig
from execution_engine.errors import PluginError


@dataclass(frozen=True)
class PluginFile:
    """One module of a drop-in folder, as read: what is executed is exactly this source."""

    path: Path
    module: str
    """Its name in ``sys.modules``: unique per folder and file."""
    source: bytes


def plugin_folders(config: EngineConfig) -> list[Path]:
    """The configured folders in order, each once (one folder may serve both kinds)."""
    seen: set[Path] = set()
    unique = []
    for folder in (*config.plugins.systems, *config.plugins.routing_rules):
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(folder)
    return unique


def read_plugin_files(config: EngineConfig) -> list[PluginFile]:
    """Every module of the configured folders (``*.py`` not starting with ``_``), read now."""
    files = []
    for folder in plugin_folders(config):
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
