"""The plugin hooks of execd (pluggy), grouped by what they extend.

Built-in execution systems and routing rules are plugins of these same hooks. Third parties come
in through drop-in folders (``[plugins] systems`` and ``routing_rules``) or installed packages
declaring an entry point in the group ``execd.plugins``. A module implements a hook by defining a
function of the same name decorated with :data:`hookimpl`, or, more simply, marks its rules with
:func:`routing_rule` and its execution system classes with :func:`execution_system`: the
registry turns what a module marks into implementations of these same hooks. See
``docs/routing.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pluggy

if TYPE_CHECKING:
    from execution_engine.systems.base import ExecutionSystem

PROJECT = "execd"
ENTRY_POINT_GROUP = "execd.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: A routing rule: ``rule(job, **params) -> bool`` (or an ``Answer``). ``job`` is a read-only
#: copy of the job document; see :func:`execd_routing_rules`.
Rule = Callable[..., Any]

#: Attributes the decorators set (on the function, on the class itself).
RULE_MARK = "_execd_rule_name"
SYSTEM_MARK = "_execd_execution_system"

R = TypeVar("R", bound=Callable[..., Any])
S = TypeVar("S", bound="type[ExecutionSystem]")


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

    A rule is called as ``rule(job, **params)`` with a read-only copy of the job document and the
    parameters of the rule's sub-section of the route (strings or lists of strings, as configobj
    read them, or what the rule's ``check_params`` made of them); it returns True when the job may
    take the route (or an :class:`~execution_engine.routing.Answer` saying why). A rule whose
    signature has a ``system`` parameter is also given the route's
    :class:`~execution_engine.routing.SystemInfo` (name, class, advertised capabilities).

    Parameters are checked when the configuration is loaded, against the rule's signature and by
    its optional ``check_params(**params) -> dict`` (see :mod:`execution_engine.routing.params`).
    A rule that raises ends the job in ``error`` naming the rule; a rule that takes longer than
    ``[plugins] rule_timeout`` likewise.
    """


# ---------------------------------------------------------------------- job events
@hookspec
def execd_job_ended(job: Mapping[str, Any]) -> None:
    """Called by the Notification actor once for each ended job (all implementations).

    ``job`` is the final job document. Raising asks for a retry with backoff (every
    implementation is called again, so implementations should be idempotent); a notifier such as
    a webhook implements this hook.
    """


# ---------------------------------------------------------------------- identity
@hookspec(firstresult=True)
def execd_map_owner(owner: str, job: Mapping[str, Any]) -> str | None:
    """The local account the job of ``owner`` runs as, or None to leave the answer to other
    plugins (used when ``[identity] mapping = hook``; the first answer that is not None wins).

    ``owner`` is the job's owner (a non-empty string); ``job`` a read-only copy of the job
    document (``project``, ``group``...). The account named is then vetted like that of any
    other mapping (it exists, is not root, is at or above ``[identity] min_uid``, is in
    ``[identity] groups``). No answer at all, or an exception, refuses the owner: the job ends
    in ``error`` with a reason naming the owner and this hook.
    """


# ---------------------------------------------------------------------- decorators
@overload
def routing_rule(name: R) -> R: ...


@overload
def routing_rule(name: str | None = None, *,
                 check: Callable[..., Mapping[str, Any]] | None = None) -> Callable[[R], R]: ...


def routing_rule(name: Any = None, *, check: Callable[..., Mapping[str, Any]] | None = None
                 ) -> Any:
    """Mark a function (or callable object) of a plugin module as the routing rule ``name``
    (default: the function's name). ``check``: the rule's ``check_params`` (see the hook).

    Usable bare (``@routing_rule``) or called (``@routing_rule("big_jobs", check=...)``). Only
    marks: the registry finds the marked rules of each plugin module it loads.
    """

    def mark(rule: R) -> R:
        setattr(rule, RULE_MARK, name if isinstance(name, str) and name else rule.__name__)
        if check is not None:
            setattr(rule, "check_params", check)  # noqa: B010 - a documented plugin attribute
        return rule

    if callable(name):
        rule, name = name, None
        return mark(rule)
    return mark


@overload
def execution_system(kind: S) -> S: ...


@overload
def execution_system(kind: str | None = None) -> Callable[[S], S]: ...


def execution_system(kind: Any = None) -> Any:
    """Mark an :class:`~execution_engine.systems.base.ExecutionSystem` subclass of a plugin
    module as an execution system class; ``kind`` (optional) sets its ``kind``, the value of
    ``class`` in a ``[systems]`` section.

    Usable bare (``@execution_system``) or called (``@execution_system("local_nice")``). The mark
    is not inherited: a subclass is registered only when it is marked itself.
    """

    def mark(cls: S) -> S:
        if isinstance(kind, str) and kind:
            cls.kind = kind
        setattr(cls, SYSTEM_MARK, True)
        return cls

    if isinstance(kind, type):
        cls, kind = kind, None
        return mark(cls)
    return mark
