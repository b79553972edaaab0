"""Staging file inputs into a job directory, and never outside it.

The name a file gets in the job directory (``as``, else the source's base name) must be a
relative path without ``..``, not inside the engine's ``.execd``; every directory on the way
must be a real directory of the job directory, not a symbolic link (which could lead anywhere).
Every step below the job directory is taken relative to an open directory descriptor without
following links (``execution_engine.safefs``), so a link planted there, even while staging
runs, is refused rather than written through. A staged file replaces what was there atomically
(a temporary name, then a rename), so that building again after a crash is harmless.

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

from execution_engine import safefs
from execution_engine.errors import AppError
from execution_engine.identity import Account
from execution_engine.identity.accounts import open_as
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


class StagingError(AppError):
    """A file input could not be staged; the message says which and why."""


def _open_folder(job_dir: Path, target: str) -> int:
    """A descriptor of the directory that will hold ``target``, made on the way, each step
    opened relative to the one before without following a symbolic link."""
    try:
        return safefs.open_dirs(job_dir, PurePosixPath(target).parent, create=True)
    except safefs.UnsafePathError as exc:
        relative = Path(exc.path).relative_to(job_dir)
        what = "a symbolic link: staging through it could escape the job directory" \
            if "symbolic link" in exc.why else "not a directory"
        raise StagingError(f"{relative} in the job directory is {what}") from None


def stage(source: Path, job_dir: Path, target: str, action: str,
          account: Account | None = None) -> Path:
    """Put ``source`` into ``job_dir`` as ``target`` (COPY or LINK); the staged path.
    Raises StagingError, or OSError for a failing disk (PermissionError: the account may not
    read the source).

    Everything below ``job_dir`` is done relative to directory descriptors: a link planted in
    the job directory (at a folder on the way or where the file goes) is never followed.

    With ``account`` (the job runs as it), the file is staged as the account would: copied only
    when the account itself may read the source (:func:`~execution_engine.identity.accounts.
    open_as`), and the copy (or link) is the account's."""
    reason = target_problem(target)
    if reason is not None:
        raise StagingError(f"cannot stage as {target!r}: {reason}")
    folder = _open_folder(job_dir, target)
    try:
        name = PurePosixPath(target).name
        _stage_at(folder, name, source, action, target, account)
    finally:
        os.close(folder)
    return job_dir / target


def _stage_at(folder: int, name: str, source: Path, action: str, target: str,  # noqa: PLR0917
              account: Account | None) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode):
            raise StagingError(f"{target} is already a directory in the job directory")
    temporary = f".{name}.{uuid.uuid4().hex[:12]}.staging"
    try:
        if action == "LINK":
            os.symlink(source.resolve(), temporary, dir_fd=folder)
            if account is not None:
                os.chown(temporary, account.uid, account.gid, dir_fd=folder,
                         follow_symlinks=False)
        else:
            src_fd = open_source(source) if account is None else open_as(account, source)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(src_fd, "rb") as src, \
                    open(os.open(temporary, flags, 0o600, dir_fd=folder), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                os.fchmod(out.fileno(), stat.S_IMODE(os.fstat(src.fileno()).st_mode))
                if account is not None:
                    os.fchown(out.fileno(), account.uid, account.gid)
        # Replaces a link itself, never what it points to.
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise


def open_source(source: Path) -> int:
    """A descriptor of the file to copy: its resolved path opened without following a link
    at the end, non-blocking (a FIFO swapped in after the inputs were checked never hangs the
    builder), and checked to be a regular file on the descriptor itself."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(source.resolve(), flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StagingError(f"{source} is not a regular file")
    os.set_blocking(fd, True)
    return fd
