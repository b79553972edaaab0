"""Built-in routing rules. Each is ``rule(job, **params) -> bool`` (see ``hookspecs``).

Parameters arrive as configobj read them: a string, or a list of strings for comma-separated
values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from execution_engine.hookspecs import Rule


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def owner_in(job: Mapping[str, Any], owners: str | list[str]) -> bool:
    """The job's owner is one of ``owners``."""
    return job.get("owner") in _as_list(owners)


def project_in(job: Mapping[str, Any], projects: str | list[str]) -> bool:
    """The job's project is one of ``projects``."""
    return job.get("project", "default") in _as_list(projects)


def name_matches(job: Mapping[str, Any], pattern: str) -> bool:
    """The job's name matches the regular expression ``pattern`` (``re.search``)."""
    name = job.get("name")
    return isinstance(name, str) and re.search(pattern, name) is not None


def field_equals(job: Mapping[str, Any], field: str, value: str | list[str]) -> bool:
    """The job field ``field`` (dotted path) equals ``value`` (compared as text), or one of the
    values when a list is given."""
    current: Any = job
    for part in field.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False
        current = current[part]
    return str(current) in _as_list(value)


BUILTIN_RULES: dict[str, Rule] = {
    "owner_in": owner_in,
    "project_in": project_in,
    "name_matches": name_matches,
    "field_equals": field_equals,
}
