"""Stored application definitions: the ``apps`` collection, one document per version.

Versions are numbered 1, 2, 3... per application name, in the order they were added. Adding a
definition identical to the latest version (same digest) adds nothing and answers that version,
so ``execd app add`` can be repeated safely. A job names an application and optionally a version
(default: the latest at build time); the engine records the version on the job when building it,
and a split job's subjobs are built with their master's version whatever is added meanwhile.

Document: ``{_id: "<name>@<version>", name, version, digest, added_at, source, definition}``
where ``definition`` is :meth:`AppDefinition.to_doc` (templates and snippets included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from execution_engine.apps.definition import AppDefinition
from execution_engine.errors import ExecdError
from execution_engine.store import utcnow

COLLECTION = "apps"


class UnknownApp(ExecdError):
    """No such application (or version) is stored."""


@dataclass(frozen=True)
class StoredApp:
    """One stored version of an application."""

    definition: AppDefinition
    version: int
    digest: str
    added_at: datetime | None = None
    source: str = ""

    @property
    def name(self) -> str:
        return self.definition.name

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> StoredApp:
        return cls(AppDefinition.from_doc(doc["definition"]), int(doc["version"]),
                   doc["digest"], doc.get("added_at"), doc.get("source", ""))


class AppRegistry:
    """Reads and adds application versions in one database's ``apps`` collection."""

    def __init__(self, db: Database[Any]) -> None:
        self.apps = db[COLLECTION]
        self._indexed = False

    def ensure_indexes(self) -> None:
        if not self._indexed:
            self.apps.create_index([("name", ASCENDING), ("version", DESCENDING)],
                                   name="name_version", unique=True)
            self._indexed = True

    def add(self, definition: AppDefinition, source: str = "") -> tuple[StoredApp, bool]:
        """Store ``definition`` as the next version of its application; ``(stored, added)``
        where ``added`` is False when the latest version was already identical."""
        self.ensure_indexes()
        digest = definition.digest()
        while True:
            latest = self.apps.find_one({"name": definition.name}, sort=[("version", -1)])
            if latest is not None and latest["digest"] == digest:
                return StoredApp.from_doc(latest), False
            version = 1 if latest is None else int(latest["version"]) + 1
            doc = {"_id": f"{definition.name}@{version}", "name": definition.name,
                   "version": version, "digest": digest, "added_at": utcnow(),
                   "source": source, "definition": definition.to_doc()}
            try:
                self.apps.insert_one(doc)
            except DuplicateKeyError:
                continue  # someone added a version meanwhile: look again
            return StoredApp.from_doc(doc), True

    def get(self, name: str, version: int | None = None) -> StoredApp:
        """The given version of ``name`` (default: the latest); raises UnknownApp."""
        if version is None:
            doc = self.apps.find_one({"name": name}, sort=[("version", -1)])
        else:
            doc = self.apps.find_one({"name": name, "version": version})
        if doc is None:
            known = self.versions(name)
            if not known:
                raise UnknownApp(f"no application {name!r} is stored (execd app add DIR)")
            raise UnknownApp(f"application {name!r} has no version {version} (stored: "
                             f"{', '.join(map(str, known))})")
        return StoredApp.from_doc(doc)

    def versions(self, name: str) -> list[int]:
        return sorted(int(d["version"]) for d in self.apps.find({"name": name}, {"version": 1}))

    def latest_of_each(self) -> list[dict[str, Any]]:
        """``{name, version, versions, label, added_at}`` for every application, by name."""
        pipeline: list[dict[str, Any]] = [
            {"$sort": {"name": 1, "version": -1}},
            {"$group": {"_id": "$name", "version": {"$first": "$version"},
                        "versions": {"$sum": 1}, "label": {"$first": "$definition.label"},
                        "added_at": {"$first": "$added_at"}}},
            {"$sort": {"_id": 1}},
        ]
        return [{"name": row.pop("_id"), **row} for row in self.apps.aggregate(pipeline)]
