"""What a routing rule is shown: a read-only job and, on request, the route's execution system.

A rule that declares a ``system`` parameter is given the :class:`SystemInfo` of the route it is
evaluated for: the system's name, its class and the capabilities its ``[systems]`` section
advertises (``max_cores``, ``max_memory_mb``, ``max_walltime_s``, ``queues``, ``software``). This
is how matchmaking rules compare a job's ``requirements`` with what a system offers without
ever touching the system object itself (which lives in another process, or not at all when
``execd route`` explains a decision).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: The capability keys every ``[systems]`` section may set (checked by the configspec).
CAPABILITY_KEYS = ("max_cores", "max_memory_mb", "max_walltime_s", "queues", "software")


def _limit(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _names(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class Capabilities:
    """What an execution system advertises. ``None`` / empty: not advertised (no stated limit)."""

    max_cores: int | None = None
    max_memory_mb: int | None = None
    max_walltime_s: int | None = None
    queues: tuple[str, ...] = ()
    software: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Capabilities:
        """The capabilities of a system section's (checked) options; other keys are ignored."""
        return cls(
            max_cores=_limit(options.get("max_cores")),
            max_memory_mb=_limit(options.get("max_memory_mb")),
            max_walltime_s=_limit(options.get("max_walltime_s")),
            queues=_names(options.get("queues")),
            software=_names(options.get("software")),
        )

    def describe(self) -> str:
        parts = [f"{key}={getattr(self, key)}" for key in CAPABILITY_KEYS[:3]
                 if getattr(self, key) is not None]
        parts += [f"{key}={','.join(getattr(self, key))}" for key in CAPABILITY_KEYS[3:]
                  if getattr(self, key)]
        return " ".join(parts) or "no capabilities advertised"


@dataclass(frozen=True)
class SystemInfo:
    """The read-only view of a route's execution system that rules may ask for."""

    name: str
    kind: str
    capabilities: Capabilities = Capabilities()


class ReadOnlyList(list[Any]):
    """A list that refuses changes (still a ``list`` for ``isinstance`` checks)."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the job shown to routing rules is read-only")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse


def freeze(value: Any) -> Any:
    """A read-only copy of a job document: mappings become ``MappingProxyType``, lists
    :class:`ReadOnlyList`.

    Rules get this copy, so that a rule cannot change the job the engine goes on to submit.
    """
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return ReadOnlyList(freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(value)
    return value
