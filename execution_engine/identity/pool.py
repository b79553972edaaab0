"""``mapping = pool``: pool accounts, as EDG's grid sites had them.

The job's ``project`` (or ``group``, per ``[identity] pool_key``) names a pool of local accounts.
An owner keeps the account it already leases in that pool; else it is lent a free one: an account
never leased, or one whose lease has been unused for more than ``pool_idle_s`` seconds.

Leases are documents of a MongoDB collection shared by every resolver of every daemon::

    {_id: <account>, pool: <pool>, owner: <owner>, leased_at: <date>, used_at: <date>}

Why two owners never get one account: an account is only ever lent by one
``find_one_and_update`` whose filter is "this account, idle" (``used_at`` older than the idle
limit) with ``upsert``. MongoDB applies it to the one document atomically: of two resolvers
racing, the second finds the first's fresh ``used_at`` and matches nothing; its upsert then
inserts a second document with the same ``_id``, which the unique ``_id`` index refuses
(DuplicateKeyError), and it tries the next account. A never-leased account is taken by that same
upsert. A renewal matches only while the owner still holds the lease, so it cannot undo a
takeover either. A unique index on ``(pool, owner)`` keeps one owner from leasing two accounts
of a pool when two of its jobs race.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from execution_engine.identity.config import IdentitySection
from execution_engine.identity.resolver import AccountResolver

if TYPE_CHECKING:
    from pymongo.collection import Collection

log = logging.getLogger(__name__)

OWNER_INDEX = "pool_owner_unique"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PoolResolver(AccountResolver):
    """Pool accounts leased in ``leases`` (see the module's docstring).

    ``now`` is the clock (tests may replace it). Raises PyMongoError, a transient error, when
    the database cannot be reached; OwnerRefused when the job names no pool, an unknown one, or
    a pool with no free account.
    """

    def __init__(self, section: IdentitySection, leases: Collection[Any], *,
                 now: Callable[[], datetime] = _utcnow) -> None:
        super().__init__(section)
        self.leases = leases
        self.pools = section.pools
        self.key = section.pool_key
        self.idle = timedelta(seconds=section.pool_idle_s)
        self.now = now
        self._indexed = False
        self._index_lock = threading.Lock()

    def describe(self) -> str:
        return f"pool accounts chosen by the job's {self.key} ([identity] pools)"

    def _map(self, owner: str, job: Mapping[str, Any]) -> str:
        pool = job.get(self.key)
        if not isinstance(pool, str) or not pool:
            raise self._refuse(owner, f"the job has no {self.key} to choose a pool of "
                                      f"{self.describe()}")
        accounts = self.pools.get(pool)
        if accounts is None:
            raise self._refuse(owner, f"{self.key} {pool!r} names no pool of {self.describe()} "
                                      f"(pools: {', '.join(sorted(self.pools))})")
        self._ensure_index()
        # Each pass either returns or lost a race to a concurrent lease; a race lost by every
        # account of the pool at once is as many passes as there are accounts, at most.
        for _ in range(len(accounts) + 1):
            held = self._renew(pool, owner, accounts)
            if held is not None:
                return held
            try:
                taken = self._take_free(pool, owner, accounts)
            except DuplicateKeyError:
                # The owner already leases an account of this pool: one taken meanwhile by
                # another of its jobs (renewed on the next pass), or one the administrator has
                # since removed from the pool (released now, else it would block the owner).
                self.leases.delete_many({"pool": pool, "owner": owner,
                                         "_id": {"$nin": list(accounts)}})
                continue
            if taken is not None:
                return taken
        raise self._refuse(owner, f"pool {pool!r} is exhausted: its {len(accounts)} accounts "
                                  f"are all leased to other owners and used within the last "
                                  f"{self.section.pool_idle_s:g} s ([identity] pool_idle_s)")

    def _renew(self, pool: str, owner: str, accounts: tuple[str, ...]) -> str | None:
        """The account ``owner`` leases in ``pool`` (its lease renewed), or None."""
        doc = self.leases.find_one_and_update(
            # Only accounts still in the pool: one the administrator removed is not lent again.
            {"pool": pool, "owner": owner, "_id": {"$in": list(accounts)}},
            {"$set": {"used_at": self.now()}},
            projection={"_id": True},
        )
        return None if doc is None else str(doc["_id"])

    def _take_free(self, pool: str, owner: str, accounts: tuple[str, ...]) -> str | None:
        """Lease a free account of ``pool`` to ``owner``: the name, or None when every account
        is taken. Raises DuplicateKeyError when ``owner`` got a lease in ``pool`` meanwhile."""
        now = self.now()
        cutoff = now - self.idle
        for account in self._candidates(accounts, cutoff):
            unusable = self._vet(account)
            if isinstance(unusable, str):
                # Lending an account jobs may not run as would only refuse the owner for
                # pool_idle_s; the other accounts may serve.
                log.warning("identity: pool %r: account %r skipped: %s", pool, account,
                            unusable)
                continue
            try:
                self.leases.find_one_and_update(
                    {"_id": account, "used_at": {"$lt": cutoff}},
                    {"$set": {"pool": pool, "owner": owner, "leased_at": now, "used_at": now}},
                    upsert=True, return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError as exc:
                if _key_of(exc) == "_id":
                    continue  # leased and in use: taken by someone else just now
                raise
            return account
        return None

    def _candidates(self, accounts: tuple[str, ...], cutoff: datetime) -> list[str]:
        """The accounts worth trying, never-leased first, then the longest idle: a snapshot,
        only an order; :meth:`_take_free`'s filter decides."""
        idle: list[tuple[datetime, str]] = []
        leased = set()
        for doc in self.leases.find({"_id": {"$in": list(accounts)}},
                                    {"_id": True, "used_at": True}):
            leased.add(doc["_id"])
            used_at = doc.get("used_at")
            if isinstance(used_at, datetime) and used_at.replace(tzinfo=UTC) < cutoff:
                idle.append((used_at.replace(tzinfo=UTC), doc["_id"]))
        never = [account for account in accounts if account not in leased]
        return never + [account for _, account in sorted(idle)]

    def _ensure_index(self) -> None:
        """The unique (pool, owner) index, made once per resolver (idempotent on the server)."""
        with self._index_lock:
            if not self._indexed:
                self.leases.create_index([("pool", ASCENDING), ("owner", ASCENDING)],
                                         unique=True, name=OWNER_INDEX)
                self._indexed = True


def _key_of(exc: DuplicateKeyError) -> str:
    """Which unique index refused a write: ``_id`` or the (pool, owner) index."""
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if isinstance(pattern, Mapping):
        return "_id" if "_id" in pattern else OWNER_INDEX
    # Servers that do not say: the message names the index.
    return OWNER_INDEX if OWNER_INDEX in str(exc) else "_id"
