"""Stored application definitions: the ``apps`` collection, one document per version.

Versions are numbered 1, 2, 3... per application name, in the order they were added. Adding a
definition identical to the latest version (same digest) adds nothing and answers that version,
so ``execd app add`` can be repeated safely. A job names an application and optionally a version
(default: the latest at build time); the engine records the version on the job when building it,
and a split job's subjobs are built with their master's version whatever is added meanwhile.

Document: ``{_id: "<name>@<version>", name, version, definition, digest?, added_at?, source?}``
where ``definition`` is :meth:`AppDefinition.to_doc` (templates and snippets included).
``execd app add`` writes it; a client may also insert it directly (docs/applications.md). Every
document is checked when it is read (:func:`check_stored`), with the same checks as
``execd app add``: an invalid one is never used. Reading it raises :class:`InvalidApp` naming
every problem (so a job naming it ends in ``error`` with the reason), the log says so once per
process, and :meth:`AppRegistry.latest_of_each` marks it invalid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from configobj import ConfigObj, ConfigObjError
from pymongo import ASCENDING, DESCENDING
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from execution_engine.apps.definition import (
    DEFINITION_FILE,
    ENV_DIR,
    INPUT_NAME,
    PHASES,
    SYSTEM_NAME,
    AppDefinition,
    DefinitionError,
    load_definition,
)
from execution_engine.errors import ExecdError
from execution_engine.store import utcnow

log = logging.getLogger(__name__)

COLLECTION = "apps"
DEFINITION_KEYS = ("name", "label", "description", "inputs", "outputs", "templates",
                   "environments")
INPUT_KEYS = ("name", "type", "label", "required", "default", "min", "max", "regex", "choices")
CHECKED_CACHE = 512
"""Checked documents remembered per process (checking runs ``sh -n`` on every template)."""


class UnknownApp(ExecdError):
    """No such application (or version) is stored."""


class InvalidApp(UnknownApp):
    """The stored application (version) breaks the definition contract; the message names
    every problem. A subclass of UnknownApp: whoever refuses an unknown application refuses an
    invalid one the same way."""


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
        """The stored document as it is (trusted: see :func:`check_stored` for any other)."""
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
            latest = self.apps.find_one({"name": {"$eq": definition.name}},
                                        sort=[("version", -1)])
            if latest is not None and latest.get("digest") == digest:
                return StoredApp.from_doc(latest), False
            version = max(self.versions(definition.name), default=0) + 1
            doc = {"_id": f"{definition.name}@{version}", "name": definition.name,
                   "version": version, "digest": digest, "added_at": utcnow(),
                   "source": source, "definition": definition.to_doc()}
            try:
                self.apps.insert_one(doc)
            except DuplicateKeyError:
                continue  # someone added a version meanwhile: look again
            return StoredApp.from_doc(doc), True

    def get(self, name: str, version: int | None = None) -> StoredApp:
        """The given version of ``name`` (default: the latest), checked; raises UnknownApp,
        and InvalidApp when that version breaks the definition contract."""
        if version is None:
            doc = self.apps.find_one({"name": {"$eq": name}}, sort=[("version", -1)])
        else:
            doc = self.apps.find_one({"name": {"$eq": name}, "version": {"$eq": version}})
        if doc is None:
            known = self.versions(name)
            if not known:
                raise UnknownApp(f"no application {name!r} is stored (execd app add DIR)")
            raise UnknownApp(f"application {name!r} has no version {version} (stored: "
                             f"{', '.join(map(str, known))})")
        return check_stored(doc)

    def versions(self, name: str) -> list[int]:
        return sorted(int(d["version"]) for d in self.apps.find(
            {"name": {"$eq": name}}, {"version": 1}) if _is_version(d.get("version")))

    def latest_of_each(self) -> list[dict[str, Any]]:
        """``{name, version, versions, label, added_at, valid, problem}`` for every
        application, by name: ``valid`` is False (and ``problem`` says why) when the latest
        version breaks the definition contract."""
        pipeline: list[dict[str, Any]] = [
            {"$sort": {"name": 1, "version": -1}},
            {"$group": {"_id": "$name", "latest": {"$first": "$$ROOT"},
                        "versions": {"$sum": 1}}},
            {"$sort": {"_id": 1}},
        ]
        rows = []
        for row in self.apps.aggregate(pipeline):
            latest = row["latest"]
            definition = latest.get("definition")
            label = definition.get("label") if isinstance(definition, Mapping) else None
            try:
                check_stored(latest)
                valid, problem = True, None
            except InvalidApp as exc:
                valid, problem = False, str(exc)
            rows.append({"name": row["_id"], "version": latest.get("version"),
                         "versions": row["versions"], "label": label,
                         "added_at": latest.get("added_at"), "valid": valid,
                         "problem": problem})
        return rows


# ---------------------------------------------------------------------- checking
_checked: dict[str, StoredApp | InvalidApp] = {}
_reported: set[str] = set()


def check_stored(doc: Mapping[str, Any]) -> StoredApp:
    """The application version stored as ``doc``, checked as ``execd app add`` checks a
    folder; raises InvalidApp naming every problem (and logs it, once per process).

    The document's own ``digest`` is not trusted: the digest is computed from the checked
    definition. Results are remembered by content, so a version is checked once per process.
    """
    key = hashlib.sha256(json.dumps(
        {k: doc.get(k) for k in ("_id", "name", "version", "definition")},
        sort_keys=True, default=repr).encode()).hexdigest()
    result = _checked.get(key)
    if result is None:
        result = _check(doc)
        if len(_checked) >= CHECKED_CACHE:
            _checked.pop(next(iter(_checked)))
        _checked[key] = result
    if isinstance(result, InvalidApp):
        if key not in _reported:
            _reported.add(key)
            log.warning("%s", result)
        raise result
    return result


def _check(doc: Mapping[str, Any]) -> StoredApp | InvalidApp:
    name, version, definition = doc.get("name"), doc.get("version"), doc.get("definition")
    problems: list[str] = []
    if not isinstance(name, str) or not name:
        problems.append("name: required, the application's name")
    if not _is_version(version):
        problems.append(f"version: {version!r} is not an integer >= 1")
    elif isinstance(name, str) and doc.get("_id") != f"{name}@{version}":
        problems.append(f"_id: {doc.get('_id')!r} is not '{name}@{version}'")
    if not isinstance(definition, Mapping):
        problems.append("definition: required, an object (docs/applications.md)")
    else:
        problems.extend(_shape_problems(definition, name))
    loaded = None
    if not problems:
        assert isinstance(definition, Mapping)
        loaded, checks = _load_as_folder(definition)
        problems.extend(checks)
    label = f"application {name!r} version {version!r}" if isinstance(name, str) else \
        f"application document {doc.get('_id')!r}"
    if problems or loaded is None or not isinstance(version, int):
        return InvalidApp(f"{label} is invalid: " + "; ".join(problems))
    return StoredApp(loaded, version, loaded.digest(), doc.get("added_at"),
                     str(doc.get("source") or ""))


def _is_version(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _shape_problems(definition: Mapping[str, Any], name: Any) -> list[str]:
    """What keeps ``definition`` from being written as a folder: wrong keys and types."""
    problems = [f"definition.{key}: unknown key (known: {', '.join(DEFINITION_KEYS)})"
                for key in definition if key not in DEFINITION_KEYS]
    if definition.get("name") != name:
        problems.append(f"definition.name: {definition.get('name')!r} is not the document's "
                        f"name {name!r}")
    for key in ("label", "description"):
        if key in definition and not isinstance(definition[key], str):
            problems.append(f"definition.{key}: not a string")
    outputs = definition.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        problems.append("definition.outputs: not a list of strings")
    inputs = definition.get("inputs", [])
    if not isinstance(inputs, list):
        problems.append("definition.inputs: not a list")
    else:
        for index, spec in enumerate(inputs):
            problems.extend(_input_shape_problems(index, spec))
    problems.extend(_texts_problems(definition))
    return problems


def _texts_problems(definition: Mapping[str, Any]) -> list[str]:
    """Templates keyed by phase and snippets keyed by system name, each a string."""
    problems = []
    for key, names, what in (("templates", PHASES, "a phase"),
                             ("environments", None, "an execution system name or default")):
        texts = definition.get(key, {})
        if not isinstance(texts, Mapping):
            problems.append(f"definition.{key}: not an object")
            continue
        for item, text in texts.items():
            known = item in names if names is not None else (
                isinstance(item, str) and SYSTEM_NAME.match(item) is not None)
            if not known:
                problems.append(f"definition.{key}.{item}: not {what}")
            elif not isinstance(text, str):
                problems.append(f"definition.{key}.{item}: not a string")
    if isinstance(definition.get("templates"), Mapping) and "execute" not in \
            definition["templates"]:
        problems.append("definition.templates.execute: required")
    return problems


def _input_shape_problems(index: int, spec: Any) -> list[str]:
    where = f"definition.inputs[{index}]"
    if not isinstance(spec, Mapping):
        return [f"{where}: not an object"]
    name = spec.get("name")
    if not isinstance(name, str) or not INPUT_NAME.match(name):
        return [f"{where}.name: {name!r} is not a letter then letters, digits or '_'"]
    problems = [f"definition.inputs.{name}.{key}: unknown key (known: {', '.join(INPUT_KEYS)})"
                for key in spec if key not in INPUT_KEYS]
    for key, value in spec.items():
        if key == "choices":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                problems.append(f"definition.inputs.{name}.choices: not a list of strings")
        elif value is not None and not isinstance(value, str | int | float | bool):
            problems.append(f"definition.inputs.{name}.{key}: not a single value")
    return problems


def _load_as_folder(definition: Mapping[str, Any]) -> tuple[AppDefinition | None, list[str]]:
    """Write ``definition`` as an application folder and load it with the checks of
    ``execd app add``; ``(definition, [])`` or ``(None, problems)``."""
    with tempfile.TemporaryDirectory(prefix="execd-app-") as tmp:
        folder = Path(tmp)
        ini = ConfigObj(interpolation=False, encoding="utf-8")
        ini.filename = str(folder / DEFINITION_FILE)
        for key in ("name", "label", "description"):
            if definition.get(key) is not None:
                ini[key] = definition[key]
        if definition.get("outputs"):
            ini["outputs"] = list(definition["outputs"])
        if definition.get("inputs"):
            ini["inputs"] = {spec["name"]: {k: _ini_value(v) for k, v in spec.items()
                                            if k != "name" and v is not None}
                             for spec in definition["inputs"]}
        try:
            ini.write()
        except (ConfigObjError, ValueError) as exc:  # a value it cannot quote
            return None, [f"definition: cannot be written as {DEFINITION_FILE}: {exc}"]
        for phase, text in definition.get("templates", {}).items():
            (folder / f"{phase}.sh").write_text(text)
        environments = definition.get("environments", {})
        if environments:
            (folder / ENV_DIR).mkdir()
            for system, text in environments.items():
                (folder / ENV_DIR / f"{system}.sh").write_text(text)
        try:
            return load_definition(folder), []
        except DefinitionError as exc:
            return None, [_as_field(problem) for problem in exc.problems]


def _ini_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return value


def _as_field(problem: str) -> str:
    """A folder problem (``app.ini: x``, ``execute.sh: x``, ``env/s.sh: x``) named by the
    field of the stored definition."""
    file_name, sep, rest = problem.partition(": ")
    if not sep:
        return problem
    if file_name == DEFINITION_FILE:
        return f"definition.{rest}"
    if file_name.startswith(f"{ENV_DIR}/") and file_name.endswith(".sh"):
        return f"definition.environments.{file_name[len(ENV_DIR) + 1:-3]}: {rest}"
    if file_name.endswith(".sh") and file_name[:-3] in PHASES:
        return f"definition.templates.{file_name[:-3]}: {rest}"
    return problem
