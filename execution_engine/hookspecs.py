"""The plugin hooks of execd (pluggy), grouped by what they extend.

Built-in execution systems and routing rules are plugins of these same hooks. Third parties come
in through drop-in folders (``[plugins] systems`` and ``routing_rules``) or installed packages
declaring an entry point in the group ``execd.plugins``. A module implements a hook by defining a
function of the same name decorated with :data:`hookimpl`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from execution_engine.systems.base import ExecutionSystem

PROJECT = "execd"
ENTRY_POINT_GROUP = "execd.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: A routing rule: ``rule(job, **params) -> bool``. ``job`` is the job document (read-only).
Rule = Callable[..., bool]


# ---------------------------------------------------------------------- execution systems
@hookspec
def execd_execution_systems() -> list[type[ExecutionSystem]]:  # type: ignore[empty-body]
    """The execution system classes this plugin provides.

    Each class subclasses :class:`~execution_engine.systems.base.ExecutionSystem` and sets a
    unique ``kind``: the value of ``class`` in a ``[systems]`` section of the config. All plugins'
    lists are merged; two classes of one kind are a plugin error.
    """


# ---------------------------------------------------------------------- routing
@hookspec
def execd_routing_rules() -> Mapping[str, Rule]:  # type: ignore[empty-body]
    """The routing rules this plugin provides, by name: ``{name: rule}``.

    A rule is called as ``rule(job, **params)`` with the job document and the parameters of the
    rule's sub-section of the route (strings or lists of strings, as configobj read them); it
    returns True when the job may take the route. A rule that raises ends the job in ``error``
    naming the rule; a rule that takes longer than ``[plugins] rule_timeout`` likewise.
    """


# ---------------------------------------------------------------------- job events
@hookspec
def execd_job_ended(job: Mapping[str, Any]) -> None:
    """Called by the Notification actor once for each ended job (all implementations).

    ``job`` is the final job document. Raising asks for a retry with backoff (every
    implementation is called again, so implementations should be idempotent); a notifier such as
    a webhook implements this hook.
    """
