"""Owner claims: a client proves that it, and not merely some writer of ``jobs``, named a job's
owner.

Each client of ``[identity] [[clients]]`` (a portal) shares a secret with the daemon. It signs
each job it inserts: ``claim`` is the hex HMAC-SHA256, under that secret, of the job's id, owner
and project (:func:`claim_text`), and ``client`` names the client. The engine checks the claim
(:func:`check_claim`) whenever it maps the owner to an account, when it builds the job and again
when it submits it. A writer of the collection without the secret cannot make a claim, and a
claim is bound to its job's id, owner and project, so it cannot be moved to another job nor
kept across a change of owner or project.

Typical use, on the client's side::

    job = {"_id": ObjectId(), "owner": "alice@example.org", "command": ["id"]}
    job["client"] = "portal"
    job["claim"] = sign_claim(secret, job_id_text(job["_id"]), job["owner"],
                              job_project(job))
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from execution_engine.identity.config import ClaimClient, IdentitySection
from execution_engine.identity.resolver import OwnerRefused
from execution_engine.jobdoc import job_id_text, job_project

VERSION = "execd-claim-v1"
CLAIM = re.compile(r"[0-9a-f]{64}")
"""What a claim looks like: the lowercase hex of an HMAC-SHA256."""
MAPPING = "claims of [identity] clients"
"""How a refusal names what refused the owner."""


def claim_text(job_id_text: str, owner: str, project: str) -> bytes:
    """What a claim signs: the job's id (as the engine writes it in the job directory's name),
    owner and project (the engine's default project when the job names none), one a line.
    Neither an id nor a project holds a newline; an owner that does signs its whole text."""
    return f"{VERSION}\n{job_id_text}\n{owner}\n{project}".encode()


def sign_claim(secret: bytes, job_id_text: str, owner: str, project: str) -> str:
    """The claim of a job: the hex HMAC-SHA256 of :func:`claim_text` under ``secret``."""
    return hmac.new(secret, claim_text(job_id_text, owner, project), hashlib.sha256).hexdigest()


def check_claim(section: IdentitySection, job: Mapping[str, Any]) -> None:
    """Refuse ``job`` (its document) unless its owner claim holds.

    A job with a ``client`` or a ``claim`` field must carry both, name a client of
    ``section.clients``, carry that client's claim of this job's id, owner and project, and
    have an owner and a project that client may claim. A job with neither passes only when
    ``section.require_claim`` is off. Raises :class:`OwnerRefused` saying which of these
    failed; the message never holds a secret nor the claim expected."""
    owner = job.get("owner")
    client_name, claim = job.get("client"), job.get("claim")
    if client_name is None and claim is None:
        if section.require_claim:
            raise OwnerRefused(owner, MAPPING, "the job carries no owner claim (client and "
                                               "claim), and [identity] require_claim is on")
        return
    if not isinstance(client_name, str) or not isinstance(claim, str):
        raise OwnerRefused(owner, MAPPING, "an owner claim needs both client and claim, as "
                                           "strings")
    client = section.clients.get(client_name)
    if client is None:
        raise OwnerRefused(owner, MAPPING, f"client {client_name[:100]!r} is not a client of "
                                           f"[identity] [[clients]]")
    if not isinstance(owner, str) or not owner:
        raise OwnerRefused(owner, MAPPING, "the job's owner must be a non-empty string")
    project = job_project(job)
    if not _verifies(client, claim, job_id_text(job.get("_id")), owner, project):
        raise OwnerRefused(owner, MAPPING, f"the claim of client {client.name!r} does not "
                                           f"hold for this job's id, owner and project")
    if re.fullmatch(client.owners, owner) is None:
        raise OwnerRefused(owner, MAPPING, f"client {client.name!r} may not claim this owner "
                                           f"([identity] [[clients]] [[[{client.name}]]] "
                                           f"owners = {client.owners})")
    if client.projects and project not in client.projects:
        raise OwnerRefused(owner, MAPPING, f"client {client.name!r} may not claim project "
                                           f"{project!r} ([identity] [[clients]] "
                                           f"[[[{client.name}]]] projects)")


def _verifies(client: ClaimClient, claim: str, job_id: str, owner: str, project: str) -> bool:
    if client.secret is None or CLAIM.fullmatch(claim) is None:
        return False
    expected = sign_claim(client.secret, job_id, owner, project)
    return hmac.compare_digest(expected, claim)


def sign_for_client(section: IdentitySection, client: object, job: Mapping[str, Any]
                    ) -> dict[str, str]:
    """The ``client`` and ``claim`` fields that sign ``job`` (a document the engine writes
    itself: a split job's subjobs) for ``client``, the client of a job whose claim was just
    checked; none when that job carried no claim or this process holds no secret for it."""
    found = section.clients.get(client) if isinstance(client, str) else None
    if found is None or found.secret is None:
        return {}
    return {"client": found.name,
            "claim": sign_claim(found.secret, job_id_text(job["_id"]), str(job.get("owner", "")),
                                job_project(job))}
