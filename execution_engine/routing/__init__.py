"""Routing: Rules, Routes and the Dispatcher that picks an execution system for each job.

What a rule plugin may use is re-exported here: the read-only context a rule is given
(:class:`SystemInfo`, :class:`Capabilities`), its richer answer (:class:`Answer`), and the
parameter-checking helpers (:class:`RuleParameterError`, :func:`as_list`, :func:`as_text`,
:func:`as_int`, :func:`as_bool`). See ``docs/routing.md``.
"""

from __future__ import annotations

from execution_engine.routing.context import CAPABILITY_KEYS, Capabilities, SystemInfo
from execution_engine.routing.params import (
    Answer,
    RuleParameterError,
    as_bool,
    as_int,
    as_list,
    as_text,
)

__all__ = [
    "CAPABILITY_KEYS",
    "Answer",
    "Capabilities",
    "RuleParameterError",
    "SystemInfo",
    "as_bool",
    "as_int",
    "as_list",
    "as_text",
]
