"""The built-in plugins: execution systems and routing rules shipped with execd.

They are registered through the same hooks as third-party plugins.
"""

from __future__ import annotations

from collections.abc import Mapping

from execution_engine.hookspecs import Rule, hookimpl
from execution_engine.routing import rules as builtin_rules
from execution_engine.systems.base import ExecutionSystem
from execution_engine.systems.local import LocalSystem
from execution_engine.systems.ogs import OgsSystem
from execution_engine.systems.slurm import SlurmSystem
from execution_engine.systems.torque import TorqueSystem


@hookimpl
def execd_execution_systems() -> list[type[ExecutionSystem]]:
    return [LocalSystem, OgsSystem, TorqueSystem, SlurmSystem]


@hookimpl
def execd_routing_rules() -> Mapping[str, Rule]:
    return builtin_rules.BUILTIN_RULES
