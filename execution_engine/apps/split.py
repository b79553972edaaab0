"""Split jobs: one master, one subjob per value of one input.

A job's ``splitter`` names one input of its application and one way to split it:

* ``{"input": "n", "values": [1, 5, 9]}``: one subjob per listed value;
* ``{"input": "n", "range": [start, stop, step]}``: one subjob per value of Python's
  ``range(start, stop, step)`` (stop excluded, step 1 by default);
* ``{"input": "data", "files": true}``: the job gives ``data`` a directory; one subjob per
  regular file directly in it (sorted by name; hidden files, links and sub-directories are
  skipped), staged into the subjob with the input's action;
* ``{"input": "data", "lines": 1000}``: one subjob per chunk of 1000 lines of the file given to
  ``data`` (the last chunk may be shorter); chunks are written once into the master's ``split/``
  directory and linked into the subjobs under the input's name.

The master is built once: every input is checked (each split value too), shared file inputs are
staged into the master's directory, and the subjobs are written as new job documents (state
``to be built``, ``parent``, ``index``) that go through the engine like any job. Subjob ``i``
of master ``M`` has the id ``M.i`` (so building the master again after a crash adds nothing
twice) and the directory ``<master dir>/subjobs/<i>``; its inputs are the master's, shared files
linked from the master's directory, plus its own value of the split input.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from execution_engine.apps.definition import AppDefinition
from execution_engine.apps.inputs import FileValue, check_value
from execution_engine.jobdoc import SAFE_ID, job_id_text, job_name
from execution_engine.store import utcnow

MAX_SUBJOBS = 10000
"""Subjobs one split job may have at most."""
SPLIT_SYSTEM = "split"
"""The ``system`` of a split master: no execution system runs it, its subjobs do its work."""
SUBJOBS_DIR = "subjobs"
CHUNKS_DIR = "split"
RESERVED_TARGETS = (SUBJOBS_DIR, CHUNKS_DIR)
"""Names of a master's directory that shared file inputs may not take."""
SPLIT_KINDS = ("values", "range", "files", "lines")
_LISTED = 10  # bad split values named in a message at most


class SplitError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Splitter:
    """A job's ``splitter``, already shaped by the JSON Schema."""

    input: str
    kind: str
    argument: Any

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Splitter:
        kind = next(k for k in SPLIT_KINDS if k in doc)
        return cls(doc["input"], kind, doc[kind])

    @property
    def by_files(self) -> bool:
        return self.kind == "files"


def split_values(app: AppDefinition, splitter: Splitter) -> tuple[list[Any], list[str]]:
    """The typed values of a ``values`` or ``range`` splitter, and its problems; for ``files``
    and ``lines`` only the problems of the declaration (values come from the file system)."""
    spec = app.input(splitter.input)
    where = f"splitter: input {splitter.input!r}"
    if spec is None:
        return [], [f"{where}: application {app.name} has no such input"]
    if splitter.kind in ("files", "lines"):
        if spec.type != "file":
            return [], [f"{where}: splitting by {splitter.kind} needs a file input, not "
                        f"{spec.type}"]
        return [], []
    if spec.type == "file":
        return [], [f"{where}: a file input is split by files or lines, not {splitter.kind}"]
    try:
        raw = _listed_values(splitter)
    except SplitError as exc:
        return [], exc.problems
    values: list[Any] = []
    problems: list[str] = []
    for position, value in enumerate(raw):
        typed, bad = check_value(spec, value)
        problems.extend(f"splitter: value {value!r} (subjob {position}): {reason}"
                        for reason in bad)
        values.append(typed)
    if len(problems) > _LISTED:
        problems = [*problems[:_LISTED], f"splitter: and {len(problems) - _LISTED} more bad "
                                         "values"]
    return values, problems


def _listed_values(splitter: Splitter) -> list[Any]:
    """The raw values of a ``values`` or ``range`` splitter; SplitError when there are none
    or too many."""
    if splitter.kind == "range":
        start, stop, *rest = splitter.argument
        step = rest[0] if rest else 1
        if step == 0:
            raise SplitError(["splitter: range step is 0"])
        span = range(start, stop, step)
        if len(span) > MAX_SUBJOBS:
            raise SplitError([f"splitter: range gives {len(span)} subjobs, more than "
                              f"{MAX_SUBJOBS}"])
        raw = list(span)
    else:
        raw = list(splitter.argument)
    if not raw:
        raise SplitError(["splitter: gives no subjobs"])
    if len(raw) > MAX_SUBJOBS:
        raise SplitError([f"splitter: {len(raw)} values, more than {MAX_SUBJOBS} subjobs"])
    return raw


def files_of(directory: Path, source: FileValue) -> list[FileValue]:
    """One file input per regular file directly in ``directory``, by name."""
    files = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.is_symlink() or not path.is_file():
            continue
        files.append(FileValue(path, path.name, source.action))
        if len(files) > MAX_SUBJOBS:
            raise SplitError([f"splitter: {directory} holds more than {MAX_SUBJOBS} files"])
    return files


def write_chunks(source: FileValue, lines: int, master_dir: Path) -> list[FileValue]:
    """Cut ``source`` into chunks of ``lines`` lines under ``<master_dir>/split/``; one linked
    file input per chunk, named in the subjob like the input. Each chunk is written under a
    temporary name and renamed, so a master built again never truncates a chunk in use."""
    folder = master_dir / CHUNKS_DIR
    folder.mkdir(exist_ok=True)
    name = source.target.replace("/", "_")
    chunks: list[FileValue] = []
    with open(source.source, "rb") as src:
        while True:
            block = list(itertools.islice(src, lines))
            if not block:
                break
            if len(chunks) >= MAX_SUBJOBS:
                raise SplitError([f"splitter: {source.source} gives more than {MAX_SUBJOBS} "
                                  f"chunks of {lines} lines"])
            path = folder / f"{name}.{len(chunks)}"
            temporary = folder / f".{path.name}.part"
            temporary.write_bytes(b"".join(block))
            temporary.replace(path)
            chunks.append(FileValue(path, source.target, "LINK"))
    return chunks


def subjob_id(master_id: object, index: int) -> str:
    return f"{job_id_text(master_id)}.{index}"


def check_subjob_ids(master_id: object, count: int) -> str | None:
    """Why the master's id cannot name ``count`` subjobs (``<id>.<index>``), or None."""
    last = subjob_id(master_id, count - 1)
    if not SAFE_ID.match(last):
        return (f"_id: too long to name its subjobs ({last!r} would be more than 64 "
                "characters)")
    return None


def subjob_documents(master: Mapping[str, Any], version: int, shared: Mapping[str, Any], *,
                     split_input: str, per_subjob: list[Any], master_dir: Path
                     ) -> list[dict[str, Any]]:
    """The job documents of a master's subjobs, ready to insert."""
    common: list[dict[str, Any]] = []
    for name, value in shared.items():
        if value is None:
            continue
        if isinstance(value, FileValue):  # staged once, in the master's directory
            common.append(FileValue(master_dir / value.target, value.target, "LINK")
                          .as_input(name))
        else:
            common.append({"name": name, "value": value})
    now = utcnow()
    base_name = job_name(master)[:240]
    docs = []
    for index, value in enumerate(per_subjob):
        own = value.as_input(split_input) if isinstance(value, FileValue) else \
            {"name": split_input, "value": value}
        doc: dict[str, Any] = {
            "_id": subjob_id(master["_id"], index),
            "state": "to be built",
            "name": f"{base_name} [{index}]",
            "app": {"name": master["app"]["name"], "version": version},
            "inputs": [*common, own],
            "parent": master["_id"],
            "index": index,
            "notify": False,  # the master tells the owner, once
            "created_at": now,
        }
        for key in ("owner", "project", "environment", "requirements"):
            if master.get(key) is not None:
                doc[key] = master[key]
        docs.append(doc)
    return docs


def insert_subjobs(jobs: Collection[Any], docs: list[dict[str, Any]]) -> None:
    """Insert subjob documents; those already there (a master built again) are kept. Raises
    SplitError when an id is taken by a job that is not this master's subjob."""
    for start in range(0, len(docs), 1000):
        with contextlib.suppress(BulkWriteError):  # duplicates: checked below
            jobs.insert_many(docs[start:start + 1000], ordered=False)
    if not docs:
        return
    ids = [d["_id"] for d in docs]
    ours = {d["_id"] for d in jobs.find({"_id": {"$in": ids}, "parent": docs[0]["parent"]},
                                        {"_id": 1})}
    missing = [i for i in ids if i not in ours]
    if missing:
        raise SplitError([f"could not write {len(missing)} subjobs (ids taken by other jobs?): "
                          + ", ".join(missing[:5])])
