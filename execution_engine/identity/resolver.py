"""The contract of every mapping mode: :class:`AccountResolver` and its one error,
:class:`OwnerRefused`.

A resolver answers one question per job, "which account does this job run as?", in two steps:
the mode maps the owner to an account name (:meth:`AccountResolver._map`), then the base class
vets that account (:func:`~execution_engine.identity.accounts.vet`). Modes differ only in the
first step, so none of them can skip the second.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from execution_engine.errors import ExecdError
from execution_engine.identity.accounts import Account, group_ids, vet
from execution_engine.identity.config import IdentitySection


class OwnerRefused(ExecdError):
    """The job's owner maps to no account it may run as; permanent for that job.

    ``str()`` is the whole reason, naming the owner and the mapping, e.g. ``owner 'bob@x.org'
    maps to no account: not in map file /etc/execd/owners`` or ``owner 'eve@x.org' maps to
    account 'root' by map file /etc/execd/owners: it has uid 0 (root), which is never
    allowed``."""

    owner: str
    """The owner (its ``repr`` when the job's owner is not a string)."""
    mapping: str
    """The mapping that refused it (:meth:`AccountResolver.describe`)."""
    why: str
    """Why, as a phrase."""
    account: str | None
    """The account the owner mapped to when that account was refused, else None."""

    def __init__(self, owner: object, mapping: str, why: str, account: str | None = None
                 ) -> None:
        self.owner = owner if isinstance(owner, str) else repr(owner)
        self.mapping = mapping
        self.why = why
        self.account = account
        if account is None:
            text = f"owner {owner!r} maps to no account: {why}"
        else:
            text = f"owner {owner!r} maps to account {account!r} by {mapping}: {why}"
        super().__init__(text)


class AccountResolver(ABC):
    """Maps a job's owner to the local account the job runs as.

    Made from the configuration by
    :func:`~execution_engine.identity.factory.resolver_from_config`; a reload makes a new one.
    Safe to share between threads.
    """

    def __init__(self, section: IdentitySection) -> None:
        self.section = section
        # Resolved now: a group named in the configuration that no longer exists is an error
        # when the resolver is made, not a silent "no group" at each job.
        self._allowed_gids = group_ids(section.groups)

    def account_for(self, job: Mapping[str, Any]) -> Account:
        """The account the job ``job`` (its document: ``owner``, maybe ``project``, ``group``)
        runs as. Raises :class:`OwnerRefused` when the owner is not a non-empty string, maps to
        nothing, or maps to an account that fails vetting. Other errors (the database of the
        pool leases unreachable) are transient and propagate."""
        owner = job.get("owner")
        if not isinstance(owner, str) or not owner:
            raise OwnerRefused(owner, self.describe(),
                               f"the job's owner must be a non-empty string, not "
                               f"{type(owner).__name__} {owner!r}")
        name = self._map(owner, job)
        return self._vetted(owner, name)

    @abstractmethod
    def describe(self) -> str:
        """The mapping in words, for messages: ``map file /etc/execd/owners``."""

    @abstractmethod
    def _map(self, owner: str, job: Mapping[str, Any]) -> str:
        """The account name ``owner`` maps to (not yet vetted); raises OwnerRefused."""

    def _vetted(self, owner: str, name: str) -> Account:
        found = self._vet(name)
        if isinstance(found, str):
            raise OwnerRefused(owner, self.describe(), found, account=name)
        return found

    def _vet(self, name: str) -> Account | str:
        """The account ``name`` when jobs may run as it, else why not."""
        return vet(name, min_uid=self.section.min_uid, allowed_gids=self._allowed_gids,
                   group_names=self.section.groups)

    def _refuse(self, owner: str, why: str) -> OwnerRefused:
        """The error for an owner that maps to no account."""
        return OwnerRefused(owner, self.describe(), why)
