"""Staging file inputs into a job directory, and never outside it.

The name a file gets in the job directory (``as``, else the source's base name) must be a
relative path without ``..``, not inside the engine's ``.execd``; every directory on the way
must be a real directory of the job directory, not a symbolic link (which could lead anywhere).
A staged file replaces what was there atomically (a temporary name, then a rename), so that
building again after a crash is harmless.

``COPY`` copies the file (mode bits included); ``LINK`` makes a symbolic link to the source's
absolute, resolved path (the source must then stay where it is while the job runs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from execution_engine.systems.base import ENGINE_DIR

MAX_NAME = 255


def target_problem(target: str,  # noqa: PLR0911 - a return per way out
                   reserved: Sequence[str] = ()) -> str | None:
    """Why ``target`` may not name a staged file in a job directory; None when it may."""
    if not target or "\0" in target:
        return "empty or holds a NUL character"
    path = PurePosixPath(target)
    if path.is_absolute():
        return "an absolute path would escape the job directory"
    parts = target.split("/")
    if any(part == ".." for part in parts):
        return "'..' would escape the job directory"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' path components"
    if any(len(part.encode()) > MAX_NAME for part in parts):
        return f"a name longer than {MAX_NAME} bytes"
    if parts[0] in (ENGINE_DIR, *reserved):
        return f"{parts[0]!r} is reserved for the engine"
    return None


class StagingError(Exception):
    """A file input could not be staged; the message says which and why."""


def _inside(job_dir: Path, target: str) -> Path:
    """The directory that will hold ``target``, made on the way, each step checked to be a real
    directory (not a symbolic link) inside ``job_dir``."""
    current = job_dir
    for part in target.split("/")[:-1]:
        current = current / part
        with contextlib.suppress(FileExistsError):
            current.mkdir()
        info = current.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise StagingError(f"{current.relative_to(job_dir)} in the job directory is a "
                               "symbolic link: staging through it could escape the job "
                               "directory")
        if not stat.S_ISDIR(info.st_mode):
            raise StagingError(f"{current.relative_to(job_dir)} in the job directory is not a "
                               "directory")
    return current


def stage(source: Path, job_dir: Path, target: str, action: str) -> Path:
    """Put ``source`` into ``job_dir`` as ``target`` (COPY or LINK); the staged path.
    Raises StagingError, or OSError for a failing disk."""
    reason = target_problem(target)
    if reason is not None:
        raise StagingError(f"cannot stage as {target!r}: {reason}")
    folder = _inside(job_dir, target)
    final = folder / PurePosixPath(target).name
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(final.lstat().st_mode):
            raise StagingError(f"{target} is already a directory in the job directory")
    temporary = folder / f".{final.name}.{uuid.uuid4().hex[:12]}.staging"
    try:
        if action == "LINK":
            temporary.symlink_to(source.resolve())
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600)
            with open(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            temporary.chmod(stat.S_IMODE(source.stat().st_mode))
        temporary.replace(final)  # replaces a link itself, never what it points to
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    return final
