"""Identity: which local account a job runs as, from its ``owner`` (``[identity]``).

A site maps owners to accounts by a map file, a regular expression, pool accounts leased in
MongoDB, or a plugin (the ``execd_map_owner`` hook); whichever it chooses, the account is then
vetted (it exists, is not root, is above the uid floor, is in the allowed groups) and a refusal
is an :class:`OwnerRefused` naming the owner, the mapping and why.

Typical use::

    resolver = resolver_from_config(config.identity, leases=db["leases"],
                                    hook=manager.hook.execd_map_owner)
    if resolver is not None:
        account = resolver.account_for(job_document)   # raises OwnerRefused

A client of ``[identity] [[clients]]`` signs its jobs' owners (:func:`sign_claim`); the engine
checks the claim (:func:`check_claim`, which raises OwnerRefused too) before it maps the owner.
"""

from execution_engine.identity.accounts import Account
from execution_engine.identity.claims import check_claim, sign_claim
from execution_engine.identity.config import (
    ClaimClient,
    IdentitySection,
    parse_identity_section,
    read_secret_file,
)
from execution_engine.identity.factory import check_privilege, resolver_from_config
from execution_engine.identity.resolver import AccountResolver, OwnerRefused

__all__ = [
    "Account",
    "AccountResolver",
    "ClaimClient",
    "IdentitySection",
    "OwnerRefused",
    "check_claim",
    "check_privilege",
    "parse_identity_section",
    "read_secret_file",
    "resolver_from_config",
    "sign_claim",
]
