"""A job's outputs: listed when it ends (with checksums for an application job), and fetched
safely.

Listing (done by the Status actor as the job ends): for a plain job every regular file of its
directory (:func:`job_outputs`); for an application job the files matching the application's
output patterns (shell globs relative to the job directory, ``**`` for any depth), each with its
SHA-256 (:func:`app_outputs`). Never inside ``.execd``, regular files only: a symbolic link is
never an output (it could point anywhere) and is never followed, not even to look inside a
linked directory. The walk is bounded (``safefs.MAX_DEPTH`` levels, ``safefs.MAX_SCANNED``
entries, ``MAX_OUTPUTS`` listed), so a link loop or a huge tree costs little; a list cut short
ends with ``{"path": "...", "size": None, "truncated": True}``.

Fetching (the output sandbox, ``execd fetch``): each output is opened below the job directory
without following a link on the way, copied to a temporary name beside its destination, its
SHA-256 checked against the listed one, then renamed into place. An interrupted fetch leaves
complete, verified files and temporary names only, and can be repeated: a destination already
holding the right content is kept as it is.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import itertools
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from execution_engine import safefs
from execution_engine.apps.forge import FAILED_PHASE_NAME
from execution_engine.apps.staging import target_problem
from execution_engine.errors import AppError
from execution_engine.safefs import BoundedWalk
from execution_engine.systems.base import ENGINE_DIR

MAX_OUTPUTS = 1000
"""Outputs listed on a job at most (a further entry ``{"path": "...", "truncated": true}``
says there were more)."""
_CHUNK = 1 << 20
MAX_PHASE_BYTES = 256
"""Bytes of the failed-phase record read at most."""


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_TRUNCATED: dict[str, Any] = {"path": "...", "size": None, "truncated": True}


def bounded_outputs(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first ``MAX_OUTPUTS`` of ``entries`` (read no further), and after them a
    ``{"path": "...", "size": None, "truncated": True}`` entry when there were more."""
    outputs = list(itertools.islice(entries, MAX_OUTPUTS + 1))
    if len(outputs) > MAX_OUTPUTS:
        outputs[MAX_OUTPUTS:] = [dict(_TRUNCATED)]
    return outputs


def job_outputs(job_dir: Path) -> list[dict[str, Any]]:
    """``[{path, size}]`` for the regular files of a plain job's directory, by path (the
    engine's ``.execd`` left out), bounded like every outputs list.

    Walked with :class:`~execution_engine.safefs.BoundedWalk`: a symbolic link is never an
    output (it could point anywhere) and is never entered, directories deeper than
    ``MAX_DEPTH`` levels are not listed, and at most ``MAX_SCANNED`` entries are looked at; a
    listing cut short by either ends with the truncated entry."""
    walk = BoundedWalk(job_dir, skip_top=(ENGINE_DIR,))
    files = ({"path": e.path, "size": e.size} for e in walk if e.kind == "file")
    return _marked(bounded_outputs(files), walk)


def _marked(outputs: list[dict[str, Any]], walk: BoundedWalk) -> list[dict[str, Any]]:
    """``outputs``, with the truncated entry added when the walk stopped short."""
    if walk.truncated and not (outputs and outputs[-1].get("truncated")):
        outputs.append(dict(_TRUNCATED))
    return outputs


def _pattern_parts(pattern: str) -> tuple[str, ...] | None:
    """The components of an output pattern, None for one that is not a safe relative path."""
    if target_problem(pattern) is not None:
        return None
    return tuple(pattern.split("/"))


def glob_match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether the relative ``path`` matches the shell glob ``pattern`` (both split into
    components) as ``glob.glob(recursive=True)`` would: ``**`` for any number of directories,
    and a wildcard never matching a name that begins with a dot (a hidden file needs a leading
    dot in the pattern)."""
    if not pattern:
        return not path
    head = pattern[0]
    if head == "**":
        if glob_match(pattern[1:], path):
            return True
        return bool(path) and not path[0].startswith(".") and glob_match(pattern, path[1:])
    if not path:
        return False
    name = path[0]
    if name.startswith(".") and not head.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, head) and glob_match(pattern[1:], path[1:])


def app_outputs(job_dir: Path, patterns: Iterable[str]) -> list[dict[str, Any]]:
    """``[{path, size, sha256}]`` for the files of ``job_dir`` matching ``patterns``, by path.

    Shell glob semantics relative to the job directory (see :func:`glob_match`); regular
    files only, never inside ``.execd``. The directory is walked like :func:`job_outputs`
    (links never followed nor listed, bounded in depth and entries), and each file is read for
    its checksum through descriptors opened without following links, so a file replaced by a
    link meanwhile is left out rather than read."""
    compiled = [parts for parts in map(_pattern_parts, patterns) if parts is not None]
    walk = BoundedWalk(job_dir, skip_top=(ENGINE_DIR,))
    found = [entry.path for entry in walk if entry.kind == "file"
             and any(glob_match(parts, tuple(entry.path.split("/"))) for parts in compiled)]

    def described() -> Iterator[dict[str, Any]]:
        for relative in sorted(found):
            try:
                fd = safefs.open_file(job_dir, relative)
            except (OSError, ValueError):
                continue
            try:
                with open(fd, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError:
                continue
            yield {"path": relative, "size": size, "sha256": digest}

    return _marked(bounded_outputs(described()), walk)


def failed_phase(job_dir: Path) -> str | None:
    """The step of an application job that failed, as its script recorded it."""
    try:  # a phase name is short; a link planted there is not read through
        data = safefs.read_bytes(job_dir, FAILED_PHASE_NAME, MAX_PHASE_BYTES)
    except (OSError, ValueError):
        return None
    text = _printable(data)
    return text or None


def _printable(data: bytes) -> str:
    """Bytes a job wrote, as one line of printable text for a message."""
    text = data.decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def failed_phase_message(job_dir: Path, message: str) -> str:
    """``message`` about a failed job, naming the failed phase when there is one."""
    phase = failed_phase(job_dir)
    return f"phase {phase} failed: {message}" if phase else message


# ---------------------------------------------------------------------- fetching
class FetchError(AppError):
    """Outputs could not all be fetched; ``problems`` name each file and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class FetchReport:
    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    """Already at the destination with the right checksum (an earlier, interrupted fetch)."""
    problems: list[str] = field(default_factory=list)

    @property
    def fetched(self) -> list[str]:
        return [*self.present, *self.copied]


def fetch_outputs(job_dir: Path, outputs: Sequence[Mapping[str, Any]], dest: Path
                  ) -> FetchReport:
    """Copy each listed output of ``job_dir`` into ``dest`` (same relative path), verified."""
    report = FetchReport()
    for output in outputs:
        relative = output.get("path")
        if output.get("truncated") or not isinstance(relative, str):
            continue
        reason = target_problem(relative)
        if reason is not None:
            report.problems.append(f"{relative}: {reason}")
            continue
        try:  # no component taken through a link: a link planted meanwhile is refused
            source = safefs.open_file(job_dir, relative)
        except safefs.UnsafePathError:
            report.problems.append(f"{relative}: not a regular file of the job directory")
            continue
        except OSError as exc:
            report.problems.append(f"{relative}: cannot be read in {job_dir}: {exc.strerror}")
            continue
        target = dest / relative
        try:
            _remove_leftovers(target)
            expected = output.get("sha256")
            if expected and target.is_file() and not target.is_symlink() \
                    and sha256_of(target) == expected:
                report.present.append(relative)
                continue
            _copy_verified(source, target, expected, output.get("size"))
        except (OSError, FetchError) as exc:
            report.problems.append(f"{relative}: {exc}")
            continue
        finally:
            os.close(source)
        report.copied.append(relative)
    return report


def _remove_leftovers(target: Path) -> None:
    """Temporaries an interrupted fetch left beside ``target``."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _copy_verified(source: int, target: Path, expected: str | None, size: Any) -> None:
    """Copy the open file ``source`` (read from its start; not closed here) to a temporary
    name, check size and checksum, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as out, open(source, "rb", closefd=False) as src:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        written = temporary.stat().st_size
        if isinstance(size, int) and written != size:
            raise FetchError([f"{written} bytes, not the listed {size}; not fetched"])
        digest = sha256_of(temporary)  # what landed on the disk, not what was read
        if expected and digest != expected:
            raise FetchError([f"checksum {digest} is not the listed {expected} (the file "
                              "changed after the job ended?); not fetched"])
        temporary.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
