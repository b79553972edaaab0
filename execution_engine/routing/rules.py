"""Built-in routing rules. Each is ``rule(job, **params) -> bool`` (see :mod:`.params`).

Parameters arrive as configobj read them (a string, or a list of strings for comma-separated
values); the rules that need more than that carry a ``check_params`` that converts them once,
when the configuration is loaded, so that a bad value (an invalid regex, a non-boolean) refuses
the configuration instead of failing jobs.

=====================  ==================================================================
rule                   passes when
=====================  ==================================================================
owner_in               the job's owner is one of ``owners``
owner_is_local         the job's owner is an account of this host (``pwd``); with
                       ``domains``, an owner ``name@domain`` counts for ``name``
project_in             the job's project is one of ``projects``
name_matches           the job's name matches the regular expression ``pattern``
field_equals           the job field ``field`` (dotted path) equals ``value`` (or one of)
matches_requirements   the job's ``requirements`` fit the route's system capabilities
=====================  ==================================================================
"""

from __future__ import annotations

import pwd
import re
from collections.abc import Callable, Mapping
from typing import Any

from execution_engine.hookspecs import Rule
from execution_engine.jobdoc import job_name, job_project
from execution_engine.routing.context import Capabilities, SystemInfo
from execution_engine.routing.params import (
    Answer,
    RuleParameterError,
    as_bool,
    as_list,
    as_text,
)


def _checks(check: Callable[..., Mapping[str, Any]]) -> Callable[[Rule], Rule]:
    def attach(rule: Rule) -> Rule:
        rule.check_params = check  # type: ignore[attr-defined]
        return rule

    return attach


# ---------------------------------------------------------------------- who and what
def _check_owners(owners: Any) -> dict[str, Any]:
    return {"owners": frozenset(as_list("owners", owners))}


@_checks(_check_owners)
def owner_in(job: Mapping[str, Any], owners: frozenset[str]) -> bool:
    """The job's owner is one of ``owners``."""
    return job.get("owner") in owners


def _check_domains(domains: Any = ()) -> dict[str, Any]:
    return {"domains": frozenset(d.lower() for d in as_list("domains", domains,
                                                            allow_empty=True))}


@_checks(_check_domains)
def owner_is_local(job: Mapping[str, Any], domains: frozenset[str] = frozenset()) -> bool:
    """The job's owner is a user account of this host (as ``getpwnam`` sees it: local files,
    LDAP...). An owner written ``name@domain`` counts as ``name`` when ``domain`` is one of
    ``domains``."""
    owner = job.get("owner")
    if not isinstance(owner, str) or not owner:
        return False
    account, at, domain = owner.partition("@")
    if at:
        if domain.lower() not in domains:
            return False
        owner = account
    try:
        pwd.getpwnam(owner)
    except KeyError:
        return False
    return True


def _check_projects(projects: Any) -> dict[str, Any]:
    return {"projects": frozenset(as_list("projects", projects))}


@_checks(_check_projects)
def project_in(job: Mapping[str, Any], projects: frozenset[str]) -> bool:
    """The job's project (``default`` when it has none) is one of ``projects``."""
    return job_project(job) in projects


def _check_pattern(pattern: Any) -> dict[str, Any]:
    text = as_text("pattern", pattern)
    try:
        return {"pattern": re.compile(text)}
    except re.error as exc:
        raise RuleParameterError("pattern", f"invalid regular expression {text!r}: {exc}"
                                 ) from None


@_checks(_check_pattern)
def name_matches(job: Mapping[str, Any], pattern: re.Pattern[str]) -> bool:
    """The job's name (its program's name when it has none) matches ``pattern`` (``re.search``:
    anchor with ``^...$`` for a whole-name match)."""
    return pattern.search(job_name(job)) is not None


def _check_field(field: Any, value: Any) -> dict[str, Any]:
    path = as_text("field", field)
    if not path or any(not part for part in path.split(".")):
        raise RuleParameterError("field", f"{path!r} is not a dotted field path")
    return {"field": tuple(path.split(".")),
            "value": frozenset(as_list("value", value, allow_empty=True)) or frozenset({""})}


@_checks(_check_field)
def field_equals(job: Mapping[str, Any], field: tuple[str, ...], value: frozenset[str]) -> bool:
    """The job field ``field`` (a dotted path such as ``metadata.tier``) equals ``value``, or one
    of the values when a list is given. Compared as text; a missing field never matches."""
    current: Any = job
    for part in field:
        if not isinstance(current, Mapping) or part not in current:
            return False
        current = current[part]
    if isinstance(current, bool):
        current = str(current).lower()
    return str(current) in value


# ---------------------------------------------------------------------- matchmaking
def unmet_requirements(requirements: Mapping[str, Any] | None, capabilities: Capabilities,
                       strict: bool = False) -> list[str]:
    """What of the job's ``requirements`` the capabilities do not offer, in words (empty: fits).

    A capability the system does not advertise does not limit it, unless ``strict``: then a job
    asking for something the system does not advertise does not fit.
    """
    req = requirements or {}
    unmet = [_unmet_limit(key, req.get(key), limit_key, getattr(capabilities, limit_key), strict)
             for key, limit_key in (("cores", "max_cores"), ("memory_mb", "max_memory_mb"),
                                    ("walltime_s", "max_walltime_s"))]
    queue = req.get("queue")
    unmet.append(_unmet_names("queue", [queue] if queue else [], "queues",
                              capabilities.queues, strict))
    unmet.append(_unmet_names("software", [s for s in req.get("software") or () if s],
                              "software", capabilities.software, strict))
    return [problem for problem in unmet if problem]


def _unmet_limit(key: str, wanted: Any, limit_key: str, limit: int | None, strict: bool) -> str:
    if wanted is None:
        return ""
    if limit is None:
        return f"{key} {wanted}: {limit_key} not advertised" if strict else ""
    return f"{key} {wanted} > {limit_key} {limit}" if int(wanted) > limit else ""


def _unmet_names(key: str, wanted: list[str], offered_key: str, offered: tuple[str, ...],
                 strict: bool) -> str:
    if not wanted:
        return ""
    if not offered:
        return f"{key} {', '.join(wanted)}: no {offered_key} advertised" if strict else ""
    missing = [name for name in wanted if name not in offered]
    return f"{key} {', '.join(missing)} not in {offered_key} ({', '.join(offered)})" \
        if missing else ""


def _check_strict(strict: Any = False) -> dict[str, Any]:
    return {"strict": as_bool("strict", strict)}


@_checks(_check_strict)
def matches_requirements(job: Mapping[str, Any], system: SystemInfo, strict: bool = False
                         ) -> Answer:
    """EDG/LCG-style matchmaking: the job's ``requirements`` (cores, memory_mb, walltime_s, queue,
    software) against the capabilities the route's system advertises in its ``[systems]``
    section (max_cores, max_memory_mb, max_walltime_s, queues, software)."""
    unmet = unmet_requirements(job.get("requirements"), system.capabilities, strict)
    if unmet:
        return Answer(False, f"{system.name} does not offer: {'; '.join(unmet)}")
    return Answer(True)


BUILTIN_RULES: dict[str, Rule] = {
    "owner_in": owner_in,
    "owner_is_local": owner_is_local,
    "project_in": project_in,
    "name_matches": name_matches,
    "field_equals": field_equals,
    "matches_requirements": matches_requirements,
}
