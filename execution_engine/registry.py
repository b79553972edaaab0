"""The plugin registry's former home: what it offered, now in :mod:`execution_engine.plugins`.
"""

from execution_engine.plugins import (
    BUILTIN_SOURCE,
    LoaderRole,
    PluginFile,
    Registry,
    check_config_against,
    common_system_spec,
    create_system,
    create_systems,
    declare_role,
    load_module_source,
    load_registry,
    marked_in,
    read_plugin_files,
    system_options,
)

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
    "load_registry",
    "marked_in",
    "read_plugin_files",
    "system_options",
]
