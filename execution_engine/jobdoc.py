"""The job document: checking what a client wrote, and the values the engine derives from it.

The contract is ``schema/job.schema.json`` (documented in ``docs/job-contract.md``). Checking
reports every problem at once, each naming the field, so that a client can fix its job in one go.

Every job is checked, and nearly every job is valid: a document first goes through the schema
compiled to Python (fastjsonschema), which only answers valid or not, about ten times faster
than walking the schema; only a document it refuses is walked by jsonschema, which names every
problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import bson
import fastjsonschema
from bson import ObjectId
from jsonschema import Draft202012Validator

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
DEFAULT_PROJECT = "default"


@cache
def job_schema() -> dict[str, Any]:
    """The JSON Schema of the job document, as shipped in the package."""
    text = resources.files("execution_engine").joinpath("schema/job.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _python_patterns(node: Any) -> Any:
    """``node`` with every ``pattern`` ending in ``$`` made to end in ``\\Z``.

    The schema's patterns are ECMA-262, where ``$`` is the end of the string; in Python's ``re``,
    which both validators use, ``$`` also matches before a final newline, which would let
    ``"project": "p\\n"`` through to a directory name.
    """
    if isinstance(node, list):
        return [_python_patterns(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _python_patterns(value) for key, value in node.items()}
    pattern = node.get("pattern")
    if isinstance(pattern, str) and pattern.endswith("$"):
        out["pattern"] = pattern[:-1] + "\\Z"
    return out


@cache
def _engine_schema() -> dict[str, Any]:
    """The schema as the engine's Python validators apply it."""
    schema: dict[str, Any] = _python_patterns(job_schema())
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_engine_schema())


@cache
def _fast_check() -> Callable[[Any], Any]:
    """The schema compiled to Python; raises ``JsonSchemaException`` on an invalid document.

    fastjsonschema knows drafts up to 7: the keywords the job schema uses mean the same there as
    in 2020-12 (a test holds the two validators to the same verdicts).
    """
    schema = {**_engine_schema(), "$schema": "http://json-schema.org/draft-07/schema#"}
    check: Callable[[Any], Any] = fastjsonschema.compile(schema)
    return check


def is_valid_client_part(client_part: Mapping[str, Any]) -> bool:
    """Whether the client's fields (all but ``_id``) follow the schema (the fast check)."""
    try:
        _fast_check()(client_part)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def job_id_text(job_id: object) -> str:
    return str(job_id)


def check_job(
    doc: Mapping[str, Any], *, max_command_bytes: int, max_document_bytes: int
) -> list[str]:
    """Every way the client part of ``doc`` breaks the job contract; empty when it is fine."""
    problems: list[str] = []
    size = len(bson.encode(dict(doc)))
    if size > max_document_bytes:
        problems.append(
            f"document is {size} bytes, more than the {max_document_bytes} allowed"
            " ([engine] max_document_bytes)"
        )
        return problems  # everything else would be slow to check and beside the point
    id_problem = _id_problem(doc.get("_id"))
    if id_problem is not None:
        problems.append(id_problem)
    elif not SAFE_ID.match(job_id_text(doc.get("_id"))):
        problems.append(
            f"_id {job_id_text(doc.get('_id'))[:80]!r} cannot name a job directory"
            " (1-64 letters, digits, '.', '_' or '-', not starting with a dot)"
        )
    client_part = {k: v for k, v in doc.items() if k != "_id"}
    errors = [] if is_valid_client_part(client_part) else _validator().iter_errors(client_part)
    for error in sorted(errors, key=lambda e: list(e.path)):
        field = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            problems.append(f"{field + '.' if field else ''}{missing}: required field is missing")
        elif error.validator == "not":
            problems.append(f"{field}: {_NOT_ALLOWED.get(field, 'not allowed here')}")
        else:
            problems.append(f"{field or '(document)'}: {_short(error.message)}")
    command = doc.get("command")
    if isinstance(command, list) and all(isinstance(a, str) for a in command):
        length = sum(len(a.encode()) + 1 for a in command)
        if length > max_command_bytes:
            problems.append(
                f"command: {length} bytes, more than the {max_command_bytes} allowed"
                " ([engine] max_command_bytes)"
            )
        if any("\0" in a for a in command):
            problems.append("command: an argument contains a NUL character")
    return problems


OBJECT_ID_TEXT = re.compile(r"^[0-9a-fA-F]{24}\Z")


def request_problems(name: str, value: Any) -> list[str]:
    """What is wrong with the value of the client request field ``name`` on its own, as the
    schema says (checked inside the smallest valid job, so that only its own problems show)."""
    probe = {"_id": "request", "state": "to be built", "command": ["true"], name: value}
    return [problem for problem in check_job(probe, max_command_bytes=1 << 20,
                                             max_document_bytes=16 << 20)
            if problem.startswith(name)]


def _id_problem(job_id: object) -> str | None:
    """Why ``job_id`` cannot be a job's id, for ids that would alias another job's (and so its
    job directory): only an ObjectId or a string is an id, and a string is never the text of
    an ObjectId (``"X"`` and ``ObjectId("X")`` would share ``<jobs_dir>/<project>/X``)."""
    if isinstance(job_id, ObjectId):
        return None
    if not isinstance(job_id, str):
        return (f"_id: a job id is an ObjectId or a string, not {type(job_id).__name__}"
                " (a number and its text would name the same job directory)")
    if OBJECT_ID_TEXT.match(job_id):
        return (f"_id: {job_id!r} is the text of an ObjectId; a string id must not look like "
                f"one (it would name the same job directory as ObjectId({job_id!r}))")
    return None


_NOT_ALLOWED = {
    "command": "not allowed with app (a job runs either a command or an application)",
    "inputs": "only for a job that names an application (app)",
    "splitter": "only for a job that names an application (app)",
}


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def job_name(doc: Mapping[str, Any]) -> str:
    name = doc.get("name")
    if isinstance(name, str) and name:
        return name
    command = doc.get("command")
    if isinstance(command, list) and command and isinstance(command[0], str):
        return Path(command[0]).name or command[0]
    app = doc.get("app")
    if isinstance(app, Mapping) and isinstance(app.get("name"), str) and app["name"]:
        return app["name"]
    return job_id_text(doc.get("_id"))


def job_project(doc: Mapping[str, Any]) -> str:
    project = doc.get("project")
    return project if isinstance(project, str) and project else DEFAULT_PROJECT


def new_job_document(
    command: list[str] | None = None,
    *,
    app: Mapping[str, Any] | None = None,
    name: str | None = None,
    owner: str | None = None,
    project: str | None = None,
    environment: Mapping[str, str] | None = None,
    requirements: Mapping[str, Any] | None = None,
    notify: bool | None = None,
) -> dict[str, Any]:
    """A job document as a client writes it (what ``execd submit`` inserts): a ``command``, or
    an application (``app``: name and version) whose inputs the caller adds."""
    doc: dict[str, Any] = {"state": "to be built"}
    if command is not None:
        doc["command"] = list(command)
    if app is not None:
        doc["app"] = dict(app)
    optional = {
        "name": name,
        "owner": owner,
        "project": project,
        "environment": dict(environment) if environment else None,
        "requirements": dict(requirements) if requirements else None,
        "notify": notify,
    }
    doc.update({k: v for k, v in optional.items() if v is not None})
    return doc
