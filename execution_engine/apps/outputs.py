"""An application job's outputs: listed with checksums when it ends, and fetched safely.

Listing (done by the Status actor as the job ends): the files of the job directory matching the
application's output patterns (shell globs relative to the job directory, ``**`` for any depth),
regular files only (a symbolic link is never an output: it could point anywhere), never inside
``.execd``; each with its size and SHA-256.

Fetching (the output sandbox, ``execd fetch``): each output is copied to a temporary name beside
its destination, its SHA-256 checked against the listed one while copying, then renamed into
place. An interrupted fetch leaves complete, verified files and temporary names only, and can
be repeated: a destination already holding the right content is kept as it is.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import itertools
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from execution_engine.apps.forge import FAILED_PHASE_NAME
from execution_engine.apps.staging import target_problem
from execution_engine.systems.base import ENGINE_DIR

MAX_OUTPUTS = 1000
"""Outputs listed on a job at most (a further entry ``{"path": "...", "truncated": true}``
says there were more)."""
_CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def bounded_outputs(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first ``MAX_OUTPUTS`` of ``entries`` (read no further), and after them a
    ``{"path": "...", "size": None, "truncated": True}`` entry when there were more."""
    outputs = list(itertools.islice(entries, MAX_OUTPUTS + 1))
    if len(outputs) > MAX_OUTPUTS:
        outputs[MAX_OUTPUTS:] = [{"path": "...", "size": None, "truncated": True}]
    return outputs


def app_outputs(job_dir: Path, patterns: Iterable[str]) -> list[dict[str, Any]]:
    """``[{path, size, sha256}]`` for the files of ``job_dir`` matching ``patterns``, by path."""
    found: set[str] = set()
    root = job_dir.resolve()
    for pattern in patterns:
        if target_problem(pattern) is not None:
            continue
        # Shell glob semantics (a hidden file needs a leading dot), not pathlib's.
        for match in glob.glob(pattern, root_dir=job_dir, recursive=True):  # noqa: PTH207
            if match.split("/")[0] == ENGINE_DIR:
                continue
            path = job_dir / match
            try:
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and path.resolve().is_relative_to(root):
                found.add(match)

    def described() -> Iterator[dict[str, Any]]:
        for relative in sorted(found):
            path = job_dir / relative
            try:
                yield {"path": relative, "size": path.stat().st_size, "sha256": sha256_of(path)}
            except OSError:
                continue

    return bounded_outputs(described())


def failed_phase(job_dir: Path) -> str | None:
    """The step of an application job that failed, as its script recorded it."""
    try:
        text = (job_dir / FAILED_PHASE_NAME).read_text().strip()
    except OSError:
        return None
    return text or None


def failed_phase_message(job_dir: Path, message: str) -> str:
    """``message`` about a failed job, naming the failed phase when there is one."""
    phase = failed_phase(job_dir)
    return f"phase {phase} failed: {message}" if phase else message


# ---------------------------------------------------------------------- fetching
class FetchError(Exception):
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
    root = job_dir.resolve()
    for output in outputs:
        relative = output.get("path")
        if output.get("truncated") or not isinstance(relative, str):
            continue
        reason = target_problem(relative)
        if reason is not None:
            report.problems.append(f"{relative}: {reason}")
            continue
        source = job_dir / relative
        try:
            info = source.lstat()
        except OSError as exc:
            report.problems.append(f"{relative}: cannot be read in {job_dir}: {exc.strerror}")
            continue
        if not stat.S_ISREG(info.st_mode) or not source.resolve().is_relative_to(root):
            report.problems.append(f"{relative}: not a regular file of the job directory")
            continue
        target = dest / relative
        _remove_leftovers(target)
        expected = output.get("sha256")
        try:
            if expected and target.is_file() and not target.is_symlink() \
                    and sha256_of(target) == expected:
                report.present.append(relative)
                continue
            _copy_verified(source, target, expected, output.get("size"))
        except (OSError, FetchError) as exc:
            report.problems.append(f"{relative}: {exc}")
            continue
        report.copied.append(relative)
    return report


def _remove_leftovers(target: Path) -> None:
    """Temporaries an interrupted fetch left beside ``target``."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _copy_verified(source: Path, target: Path, expected: str | None, size: Any) -> None:
    """Copy to a temporary name, check size and checksum, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as out, open(source, "rb") as src:
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
