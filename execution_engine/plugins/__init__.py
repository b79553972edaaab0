"""Plugins: loading them (:mod:`.loading`, :mod:`.sources`), the daemon's last good set
(:mod:`.fallback`) and the execution systems made from them (:mod:`.factory`)."""

from execution_engine.plugins.factory import (
    check_config_against,
    common_system_spec,
    create_system,
    create_systems,
    system_options,
)
from execution_engine.plugins.fallback import LoaderRole, declare_role, load_registry
from execution_engine.plugins.loading import BUILTIN_SOURCE, Registry, load_plugins, marked_in
from execution_engine.plugins.sources import PluginFile, load_module_source, read_plugin_files

__all__ = [
    "BUILTIN_SOURCE",
    "LoaderRole",
    "PluginFile",
    "Registry",
    "check_config_against",
    "common_system_spec",
    "create_system",
    "create_systems",
    "declare_role",
    "load_module_source",
    "load_plugins",
    "load_registry",
    "marked_in",
    "read_plugin_files",
    "system_options",
]
