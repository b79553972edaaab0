"""Example routing rules: a drop-in plugin module for execd.

Copy this file into a folder named by ``[plugins] routing_rules`` in execd.ini (this folder is
one), then run ``execd reload``. Each ``*.py`` file of the folder (not starting with ``_``) is one
plugin module; it is loaded from its source at every start and reload, so an edited file takes
effect at the next ``execd reload``, and a file that fails to import makes the reload fail with
the reason while the previous rules stay in force. A module must be self-contained: the folder
is not on ``sys.path``, so put shared code in an installed package.

A rule is a function ``rule(job, **params) -> bool``:

* ``job`` is a read-only copy of the job document (a Mapping: ``job.get("owner")``,
  ``job.get("requirements", {})``...; lists are read-only lists);
* ``params`` are the keys of the rule's sub-section of the route, as written in the config: a
  string, or a list of strings when the value has commas. A ``check_params`` function (below)
  can check and convert them once, when the configuration is loaded;
* a parameter named ``system`` is special: the rule is then given the route's execution system
  (a ``SystemInfo``: ``name``, ``kind``, ``capabilities``), e.g. to compare the job with what
  the system advertises;
* return True to let the job take the route, False to refuse it, or ``Answer(False, "why")``
  to refuse and say why (``execd route JOB`` shows the reason).

A rule that raises, or takes longer than ``[plugins] rule_timeout`` seconds, ends the job it was
evaluating in ``error`` naming the rule. Rules run in the Submit actor for every job tried on
their route: keep them fast and free of side effects.

Two ways to register rules; this file shows both (use either, or both, in one module):

1. the decorator ``@routing_rule("name")`` (simplest);
2. the pluggy hook ``execd_routing_rules`` returning ``{name: rule}``.

Used in execd.ini like this::

    [plugins]
    routing_rules = /etc/execd/routing_rules

    [routes]
        [[academics]]
        system = cluster
        rules = owner_domain_in, wants_cores
            [[[owner_domain_in]]]
            domains = pasteur.fr, inserm.fr
            [[[wants_cores]]]
            at_least = 8
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from execution_engine import hookimpl, routing_rule
from execution_engine.routing import Answer, RuleParameterError, SystemInfo, as_int, as_list


# ---------------------------------------------------------------------- 1. the decorator
def _check_domains(domains: Any) -> dict[str, Any]:
    """Called once per route at load time with the configured parameters. Raise
    RuleParameterError(parameter, reason) for a bad value; return what the rule is called with.
    """
    names = as_list("domains", domains)  # one string or a list -> a non-empty list
    for name in names:
        if "@" in name:
            raise RuleParameterError("domains", f"{name!r} is an address, not a domain")
    return {"domains": frozenset(name.lower() for name in names)}


@routing_rule("owner_domain_in", check=_check_domains)
def owner_domain_in(job: Mapping[str, Any], domains: frozenset[str]) -> bool:
    """The job's owner is an email address in one of ``domains``."""
    owner = job.get("owner")
    if not isinstance(owner, str) or "@" not in owner:
        return False
    return owner.rpartition("@")[2].lower() in domains


def _check_at_least(at_least: Any) -> dict[str, Any]:
    return {"at_least": as_int("at_least", at_least, minimum=1)}


@routing_rule("wants_cores", check=_check_at_least)
def wants_cores(job: Mapping[str, Any], system: SystemInfo, at_least: int) -> Answer:
    """The job asks for at least ``at_least`` cores, and the route's system (``system``, given
    because the rule asks for it) offers that many. Answers with a reason."""
    cores = (job.get("requirements") or {}).get("cores") or 1
    if cores < at_least:
        return Answer(False, f"asks for {cores} cores, this route is for {at_least} or more")
    limit = system.capabilities.max_cores
    if limit is not None and cores > limit:
        return Answer(False, f"{system.name} offers at most {limit} cores")
    return Answer(True)


# ---------------------------------------------------------------------- 2. the pluggy hook
def has_metadata(job: Mapping[str, Any], key: str) -> bool:
    """The job's free-form ``metadata`` has the key ``key`` (a required parameter: a route that
    forgets it is refused at load time, naming the route, the rule and the parameter)."""
    return key in (job.get("metadata") or {})


@hookimpl
def execd_routing_rules() -> Mapping[str, Any]:
    """The hook: every rule this module provides through it, by name."""
    return {"has_metadata": has_metadata}
