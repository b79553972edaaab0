"""Binding a rule to its parameters, once, when the configuration is loaded.

A rule is ``rule(job, **params) -> bool``. Its parameters come from the rule's sub-section of a
route, as configobj read them (a string, or a list of strings for comma-separated values), and
are checked when the configuration is loaded (start, reload, ``execd route``), never first at
routing time:

1. A rule may carry a ``check_params(**params)`` callable (an attribute of the function, set by
   ``@routing_rule(check=...)``, or a method of a rule object). It raises
   :class:`RuleParameterError` (or ``ValueError``/``TypeError``) for a bad value and returns the
   parameters converted for the rule (a compiled regex, an int...), which is what the rule is
   then called with.
2. The (converted) parameters are matched against the rule's signature: a required parameter that
   is missing, or a parameter the rule does not take, is an error.
3. A rule whose signature has a ``system`` parameter is also given the route's
   :class:`~execution_engine.routing.context.SystemInfo`; ``system`` is therefore not a valid
   parameter name in the configuration.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from execution_engine.hookspecs import Rule
from execution_engine.routing.context import SystemInfo

SYSTEM_PARAM = "system"


class RuleParameterError(ValueError):
    """A rule parameter is missing, unknown or has a bad value; names the parameter."""

    def __init__(self, param: str, reason: str) -> None:
        self.param = param
        self.reason = reason
        super().__init__(f"parameter {param}: {reason}" if param else reason)


@dataclass(frozen=True)
class Answer:
    """A rule's answer with its reason, shown by ``execd route`` (a rule may also return a bool).

    ``Answer(False, "needs 64 GB, offers 8")`` refuses the route and says why.
    """

    passed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.passed


# ---------------------------------------------------------------------- conversion helpers
def as_list(param: str, value: Any, *, allow_empty: bool = False) -> list[str]:
    """A parameter as a list of strings (configobj gives one string for a single value)."""
    items = [value] if isinstance(value, str) else list(value)
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items and not allow_empty:
        raise RuleParameterError(param, "needs at least one value")
    return items


def as_text(param: str, value: Any) -> str:
    """A parameter that must be one value (not a comma-separated list)."""
    if not isinstance(value, str):
        raise RuleParameterError(param, f"expects one value, got a list {list(value)!r} "
                                        "(quote a value that contains commas)")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def as_bool(param: str, value: Any) -> bool:
    """A yes/no parameter: true/false, yes/no, on/off, 1/0."""
    if isinstance(value, bool):
        return value
    text = as_text(param, value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RuleParameterError(param, f"{value!r} is not a boolean (true/false)")


def as_int(param: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer parameter, at least ``minimum``."""
    try:
        number = int(as_text(param, value) if not isinstance(value, int) else value)
    except ValueError:
        raise RuleParameterError(param, f"{value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise RuleParameterError(param, f"{number} is smaller than {minimum}")
    return number


# ---------------------------------------------------------------------- binding
@dataclass(frozen=True)
class BoundRule:
    """A rule of a route with its checked parameters, ready to be called on jobs."""

    name: str
    rule: Rule
    params: Mapping[str, Any] = field(default_factory=dict)
    """What the rule is called with (after ``check_params``)."""
    raw_params: Mapping[str, Any] = field(default_factory=dict)
    """The parameters as written in the configuration (for explanations)."""
    wants_system: bool = False

    def __call__(self, job: Mapping[str, Any], system: SystemInfo) -> Any:
        """The rule's answer: a bool-like value or an :class:`Answer`."""
        if self.wants_system:
            return self.rule(job, system=system, **self.params)
        return self.rule(job, **self.params)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.raw_params.items())
        return f"{self.name}({args})"


def bind_rule(name: str, rule: Rule, params: Mapping[str, Any]) -> BoundRule:
    """Check ``params`` for ``rule`` and bind them; raises RuleParameterError."""
    if SYSTEM_PARAM in params:
        raise RuleParameterError(SYSTEM_PARAM, "is reserved (a rule asking for 'system' is "
                                               "given the route's execution system)")
    _check_signature(rule, params)  # missing and unknown names first: the clearest message
    converted = dict(params)
    check = getattr(rule, "check_params", None)
    if callable(check):
        try:
            answer = check(**params)
        except RuleParameterError:
            raise
        except (ValueError, TypeError) as exc:
            raise RuleParameterError("", f"bad parameters: {exc}") from exc
        except Exception as exc:  # the plugin's own bug, reported as a config problem
            raise RuleParameterError("", f"check_params raised {exc!r}") from exc
        if answer is not None:
            converted = dict(answer)
    wants_system = _check_signature(rule, converted)
    return BoundRule(name, rule, converted, dict(params), wants_system)


def _check_signature(rule: Rule, params: Mapping[str, Any]) -> bool:
    """Missing and unknown parameters against the rule's signature; True if it takes ``system``.
    """
    try:
        signature = inspect.signature(rule)
    except (TypeError, ValueError):  # a callable without introspectable signature: trust it
        return False
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL):
        raise RuleParameterError("", "the rule does not take the job as its first argument")
    rest = [p for p in parameters[1:] if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                        inspect.Parameter.POSITIONAL_ONLY)]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
    named = {p.name: p for p in rest if p.kind is not inspect.Parameter.VAR_KEYWORD}
    wants_system = SYSTEM_PARAM in named
    accepted = [n for n in named if n != SYSTEM_PARAM]
    missing = [n for n in accepted
               if named[n].default is inspect.Parameter.empty and n not in params]
    if missing:
        raise RuleParameterError(", ".join(missing), "missing (required by the rule)")
    unknown = [n for n in params if n not in named] if not takes_any else []
    if unknown:
        known = ", ".join(accepted) or "none"
        raise RuleParameterError(", ".join(unknown), f"unknown (the rule takes: {known})")
    return wants_system
