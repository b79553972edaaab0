"""Making the resolver of a configuration: :func:`resolver_from_config`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from execution_engine.errors import ConfigError
from execution_engine.identity.config import IdentitySection
from execution_engine.identity.mapping import HookResolver, MapFileResolver, PatternResolver
from execution_engine.identity.pool import PoolResolver
from execution_engine.identity.resolver import AccountResolver

if TYPE_CHECKING:
    from pymongo.collection import Collection


def resolver_from_config(section: IdentitySection, *, leases: Collection[Any] | None = None,
                         hook: Callable[..., Any] | None = None) -> AccountResolver | None:
    """The resolver of ``section``, or None when ``mapping = off`` (jobs run as the daemon's
    own user).

    ``leases``: the MongoDB collection of pool leases (needed by ``pool``); ``hook``: the hook
    caller ``plugin_manager.hook.execd_map_owner`` (needed by ``hook``). Raises ValueError when
    what the mode needs is missing, or a group of ``[identity] groups`` no longer exists (the
    map file was read, and checked, with the configuration).
    """
    if section.mapping == "off":
        return None
    if section.mapping == "map":
        return MapFileResolver(section)
    if section.mapping == "pattern":
        return PatternResolver(section)
    if section.mapping == "pool":
        if leases is None:
            raise ValueError("[identity] mapping = pool needs the collection of pool leases")
        return PoolResolver(section, leases)
    if section.mapping == "hook":
        if hook is None:
            raise ValueError("[identity] mapping = hook needs the execd_map_owner hook caller")
        return HookResolver(section, hook)
    raise ValueError(f"[identity] mapping: unknown mapping {section.mapping!r}")


def check_privilege(section: IdentitySection) -> None:
    """Raise ConfigError when jobs are to run as their owners' accounts but this process (the
    daemon) is not root: it could neither give job directories to the accounts nor switch to
    them, and every job would fail one by one instead of the daemon saying so once."""
    if section.enabled and os.geteuid() != 0:
        raise ConfigError(f"[identity] mapping = {section.mapping}: running jobs as their "
                          f"owners' accounts needs the daemon to run as root (it runs as uid "
                          f"{os.geteuid()}); set mapping = off to run every job as the daemon's "
                          "account")
