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
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from execution_engine import safefs
from execution_engine.apps.definition import AppDefinition
from execution_engine.apps.inputs import FileValue, check_value
from execution_engine.apps.staging import StagingError, open_source
from execution_engine.errors import AppError
from execution_engine.job import SUBJOBS_DIR
from execution_engine.jobdoc import SAFE_ID, job_id_text, job_name
from execution_engine.store import utcnow

MAX_SUBJOBS = 10000
"""Subjobs one split job may have at most."""
SPLIT_SYSTEM = "split"
"""The ``system`` of a split master: no execution system runs it, its subjobs do its work."""
CHUNKS_DIR = "split"
RESERVED_TARGETS = (SUBJOBS_DIR, CHUNKS_DIR)
"""Names of a master's directory that shared file inputs may not take."""
SPLIT_KINDS = ("values", "range", "files", "lines")
_LISTED = 10  # bad split values named in a message at most
_BLOCK = 1 << 20  # bytes read or copied at a time when splitting by lines


class SplitError(AppError):
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
        start, stop, step = _range_of(splitter.argument)
        count = range_length(start, stop, step)  # never len(range): it overflows past 2**63
        if count > MAX_SUBJOBS:
            raise SplitError([f"splitter.range: gives {count} subjobs, more than "
                              f"{MAX_SUBJOBS}"])
        raw = list(range(start, stop, step))
    elif isinstance(splitter.argument, list | tuple):
        raw = list(splitter.argument)
    else:
        raise SplitError([f"splitter.{splitter.kind}: not a list of values"])
    if not raw:
        raise SplitError(["splitter: gives no subjobs"])
    if len(raw) > MAX_SUBJOBS:
        raise SplitError([f"splitter: {len(raw)} values, more than {MAX_SUBJOBS} subjobs"])
    return raw


def _range_of(argument: Any) -> tuple[int, int, int]:
    """``[start, stop]`` or ``[start, stop, step]`` as three integers; SplitError naming the
    field otherwise (whatever the document holds)."""
    if not isinstance(argument, list | tuple) or len(argument) not in (2, 3):
        raise SplitError(["splitter.range: not a list [start, stop] or [start, stop, step]"])
    numbers = []
    for item in argument:
        number = int(item) if isinstance(item, float) and item.is_integer() else item
        if not isinstance(number, int) or isinstance(number, bool):
            raise SplitError([f"splitter.range: {item!r} is not an integer"])
        numbers.append(number)
    start, stop, step = (*numbers, 1) if len(numbers) == 2 else numbers
    if step == 0:
        raise SplitError(["splitter.range: step is 0"])
    return start, stop, step


def range_length(start: int, stop: int, step: int) -> int:
    """How many values ``range(start, stop, step)`` has, for integers of any size."""
    if step > 0:
        return max(0, (stop - start + step - 1) // step)
    return max(0, (start - stop - step - 1) // -step)


def files_of(directory: Path, source: FileValue) -> list[FileValue]:
    """One file input per regular file directly in ``directory``, by name. Bounded: more than
    ``MAX_SUBJOBS`` such files, or more than ``safefs.MAX_SCANNED`` entries in all, is a
    SplitError (the directory is not read any further)."""
    names = []
    with os.scandir(directory) as entries:
        for seen, entry in enumerate(entries, 1):
            if seen > safefs.MAX_SCANNED:
                raise SplitError([f"splitter.files: {directory} holds more than "
                                  f"{safefs.MAX_SCANNED} entries"])
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            names.append(entry.name)
            if len(names) > MAX_SUBJOBS:
                raise SplitError([f"splitter.files: {directory} holds more than "
                                  f"{MAX_SUBJOBS} files"])
    return [FileValue(directory / name, name, source.action) for name in sorted(names)]


def _open_lines(source: Path) -> int:
    """A descriptor of the file split by lines (see :func:`staging.open_source`)."""
    try:
        return open_source(source)
    except StagingError as exc:
        raise SplitError([f"splitter.lines: {exc}"]) from exc


def count_chunks(source: Path, lines: int) -> int:
    """How many chunks of ``lines`` lines ``source`` gives, counted in fixed-size blocks
    (however long its lines, nothing big is held); SplitError when more than
    ``MAX_SUBJOBS``."""
    newlines = 0
    last = b""
    with open(_open_lines(source), "rb") as src:
        while block := src.read(_BLOCK):
            newlines += block.count(b"\n")
            last = block
    total = newlines + (1 if last and not last.endswith(b"\n") else 0)
    count = -(-total // lines)
    if count > MAX_SUBJOBS:
        raise SplitError([f"splitter.lines: {source} gives {count} chunks of {lines} lines, "
                          f"more than {MAX_SUBJOBS}"])
    return count


def write_chunks(source: FileValue, lines: int, master_dir: Path) -> list[FileValue]:
    """Cut ``source`` into chunks of ``lines`` lines under ``<master_dir>/split/``; one linked
    file input per chunk, named in the subjob like the input.

    The chunks are counted first, so a file giving more than ``MAX_SUBJOBS`` writes nothing;
    they are copied in fixed-size blocks, so a very long line costs no memory. Each chunk is
    written under a temporary name and renamed, so a master built again never truncates a
    chunk in use; the ``split`` folder and the chunk files are made relative to the master's
    directory without following a link planted there. When writing fails, the chunks written
    by this call are removed again (none is left behind)."""
    if not isinstance(lines, int) or isinstance(lines, bool) or lines < 1:
        raise SplitError([f"splitter.lines: {lines!r} is not a positive integer"])
    expected = count_chunks(source.source, lines)
    folder = master_dir / CHUNKS_DIR
    with safefs.opened_dirs(master_dir, "") as master_fd:
        fd = safefs.open_dir_at(master_fd, CHUNKS_DIR, folder, create=True)
    name = source.target.replace("/", "_")
    written: list[str] = []
    try:
        with open(_open_lines(source.source), "rb") as src:
            while _write_chunk(fd, f"{name}.{len(written)}", src, lines):
                written.append(f"{name}.{len(written)}")
                if len(written) > max(expected, 1):  # the file grew since it was counted
                    raise SplitError([f"splitter.lines: {source.source} changed while it "
                                      "was split"])
    except BaseException:
        for chunk in written:
            with contextlib.suppress(OSError):
                os.unlink(chunk, dir_fd=fd)
        raise
    finally:
        os.close(fd)
    return [FileValue(folder / chunk, source.target, "LINK") for chunk in written]


def _write_chunk(folder: int, name: str, src: BinaryIO, lines: int) -> bool:
    """Copy the next ``lines`` lines of ``src`` to a fresh temporary name, then rename it to
    ``name``; False (nothing left behind) when ``src`` is at its end."""
    temporary = f".{name}.{uuid.uuid4().hex[:12]}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with open(os.open(temporary, flags, 0o644, dir_fd=folder), "wb") as out:
            copied = _copy_lines(src, out, lines)
        if not copied:
            os.unlink(temporary, dir_fd=folder)
            return False
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
    return True


def _copy_lines(src: BinaryIO, out: BinaryIO, lines: int) -> bool:
    """Copy up to ``lines`` lines, a block at most at a time; whether anything was copied."""
    copied = False
    done = 0
    while done < lines:
        piece = src.readline(_BLOCK)
        if not piece:
            break
        out.write(piece)
        copied = True
        done += piece.endswith(b"\n")
    return copied


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
