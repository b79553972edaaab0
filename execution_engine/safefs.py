"""Touching job directories without following a symbolic link out of them.

A job directory may hold anything its job (or, where jobs run as their owner, a local user)
put there, symbolic links included, and what is there may change while the engine looks. So
below a trusted root (the configured jobs directory, or a job directory the engine verified
itself) every path is walked one component at a time with directory descriptors: each
component is opened relative to its parent with ``O_NOFOLLOW`` (``openat``), never by a path
that the kernel would resolve through a link planted on the way. A symbolic link (or anything
that is not what the engine expects) where the engine goes ends in :class:`UnsafePathError`,
naming the path; nothing is read or written through it.

The root itself is opened as configured (an administrator may well make the jobs directory a
link to another disk): only what lies below it is distrusted.

Listing (:class:`BoundedWalk`) never descends into a symbolic link and stops at a documented
number of entries and depth, so a link loop, a link to ``/`` or a very deep or very wide tree
costs a bounded time and memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from execution_engine.errors import ExecdError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How a directory below a root is opened: never through a symbolic link."""
MAX_DEPTH = 32
"""Directory levels below the top a listing descends at most (deeper ones are not listed)."""
MAX_SCANNED = 100_000
"""Directory entries a listing looks at at most (files, directories and links alike)."""


class UnsafePathError(ExecdError, OSError):
    """A path below a trusted root is a symbolic link, or not the kind of file expected; the
    engine refuses to go through it. ``str()`` names the path and says why. An ``OSError`` too
    (``errno`` ELOOP), so that code handling a failing disk handles it as well: permanent."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(errno.ELOOP, why, str(path))
        self.path = str(path)
        self.why = why

    def __str__(self) -> str:
        return f"{self.path} {self.why}"


def components(relative: str | PurePosixPath) -> tuple[str, ...]:
    """The names of a relative path, each one a plain name; ValueError for an absolute path,
    ``..``, ``.`` or an empty component (which would leave the root or mean nothing)."""
    text = str(relative)
    if text in ("", "."):
        return ()
    if text.startswith("/") or "\0" in text:
        raise ValueError(f"{text!r} is not a relative path")
    parts = tuple(text.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{text!r} has empty, '.' or '..' components")
    return parts


def _refusal(parent_fd: int | None, name: str, shown: Path, wanted: str) -> UnsafePathError:
    """Why ``name`` (under ``parent_fd``; None: ``name`` is a path) could not be opened as
    ``wanted``."""
    try:
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        return UnsafePathError(shown, "is a symbolic link: the engine does not follow it (it "
                                      "could lead out of the directory it belongs to)")
    return UnsafePathError(shown, f"is not {wanted}")


def open_dir_at(parent_fd: int | None, name: str, shown: Path, *, create: bool = False,
                mode: int = 0o777, new: bool = False) -> int:
    """A descriptor of the directory ``name`` under ``parent_fd``, made first when ``create``
    (``mode`` less the umask); never through a symbolic link. With ``parent_fd`` None, ``name``
    is a path whose folders are trusted: only its last component must not be a link.
    ``shown`` is the path said in errors. ``new`` (with ``create``) says the directory is most
    likely not there yet: it is made before it is opened, which saves a failed lookup (what is
    there already, a link included, is then opened as without ``new``)."""
    if create and new:
        with contextlib.suppress(FileExistsError):  # there already: opened (and checked) next
            os.mkdir(name, mode, dir_fd=parent_fd)
    for attempt in (1, 2):
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create or attempt == 2:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: opened next
                os.mkdir(name, mode, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refusal(parent_fd, name, shown, "a directory") from None
            raise
    raise AssertionError("unreachable")


def open_root(root: Path, *, create: bool = False) -> int:
    """A descriptor of the trusted ``root`` (links in its own path are followed: it is the
    configuration's); made with its parents when ``create`` and missing."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(root, flags)
    except FileNotFoundError:
        if not create:
            raise
    root.mkdir(parents=True, exist_ok=True)
    return os.open(root, flags)


def open_dirs(root: Path, relative: str | PurePosixPath, *, create: bool = False,
              mode: int = 0o777, new_last: bool = False) -> int:
    """A descriptor of ``root/relative``, each component below ``root`` opened (and made, when
    ``create``) without following a symbolic link. ``new_last`` (with ``create``): the last
    component is most likely not there yet (see :func:`open_dir_at`). The caller closes it."""
    parts = components(relative)
    if not parts:
        return open_root(root, create=create)
    # The root's own path is trusted: its first component is opened by path (the kernel
    # follows no link at the last component with O_NOFOLLOW), which saves opening the root.
    shown = root / parts[0]
    first_is_last = new_last and len(parts) == 1
    try:
        fd = open_dir_at(None, str(shown), shown, create=create, mode=mode, new=first_is_last)
    except FileNotFoundError:
        if not create:
            raise
        root.mkdir(parents=True, exist_ok=True)
        fd = open_dir_at(None, str(shown), shown, create=True, mode=mode, new=first_is_last)
    try:
        for index, part in enumerate(parts[1:], 2):
            shown = shown / part
            child = open_dir_at(fd, part, shown, create=create, mode=mode,
                                new=new_last and index == len(parts))
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def opened_dirs(root: Path, relative: str | PurePosixPath, *, create: bool = False,
                mode: int = 0o777, new_last: bool = False) -> Iterator[int]:
    """:func:`open_dirs` as a context manager (the descriptor is closed on leaving)."""
    fd = open_dirs(root, relative, create=create, mode=mode, new_last=new_last)
    try:
        yield fd
    finally:
        os.close(fd)


def write_file_at(dir_fd: int, name: str, data: bytes, shown: Path, *, mode: int = 0o644
                  ) -> None:
    """Write ``data`` as the file ``name`` under ``dir_fd`` (created with ``mode`` less the
    umask, else truncated). Refused (UnsafePathError) when ``name`` is a symbolic link, not a
    regular file, or a regular file with other hard links (truncating it would change a file
    elsewhere); the check is made on the opened file, before anything is truncated."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        # Most files are new: made exclusively, they are regular, unlinked elsewhere and
        # empty, with nothing to check (O_EXCL fails on anything there, a link included).
        fd = os.open(name, flags | os.O_EXCL, mode, dir_fd=dir_fd)
        fresh = True
    except FileExistsError:
        fresh = False
    try:
        if not fresh:
            fd = os.open(name, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise _refusal(dir_fd, name, shown, "a regular file") from None
        raise
    try:
        if not fresh:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePathError(shown, "is not a regular file")
            if info.st_nlink > 1:
                raise UnsafePathError(shown, "has other hard links: writing it would change "
                                             "a file elsewhere")
            os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def write_file(root: Path, relative: str | PurePosixPath, data: bytes, *, mode: int = 0o644
               ) -> None:
    """Write ``root/relative`` (see :func:`write_file_at`), its directories below ``root``
    never taken through a symbolic link (they must exist)."""
    *folders, name = components(relative) or ("",)
    if not name:
        raise ValueError("no file name to write")
    with opened_dirs(root, "/".join(folders)) as fd:
        write_file_at(fd, name, data, root / str(relative), mode=mode)


def open_file(root: Path, relative: str | PurePosixPath) -> int:
    """A read-only descriptor of the regular file ``root/relative``, no component below
    ``root`` taken through a symbolic link (UnsafePathError otherwise). The caller closes it."""
    *folders, name = components(relative) or ("",)
    if not name:
        raise ValueError("no file name to open")
    shown = root / str(relative)
    with opened_dirs(root, "/".join(folders)) as dir_fd:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refusal(dir_fd, name, shown, "a regular file") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(shown, "is not a regular file")
    return fd


def read_bytes(root: Path, relative: str | PurePosixPath, max_bytes: int) -> bytes:
    """The first ``max_bytes`` of the regular file ``root/relative``, opened as
    :func:`open_file` does (never through a link: a job cannot make the engine read a file it
    points to). OSError (UnsafePathError among them) when it cannot be read."""
    fd = open_file(root, relative)
    try:
        chunks = []
        left = max_bytes
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- listing
@dataclass(frozen=True)
class Entry:
    """One entry met by a :class:`BoundedWalk`: its path relative to the top, its kind
    (``file``, ``dir``, ``symlink`` or ``other``) and, for a file, its size."""

    path: str
    kind: str
    size: int | None = None


class BoundedWalk:
    """The entries under ``top``, depth first, each directory's names in sorted order.

    Never follows a symbolic link (a link is yielded as a ``symlink`` entry, never entered);
    descends ``max_depth`` levels at most (deeper directories are yielded, not entered) and
    looks at ``max_scanned`` entries at most (then it stops). When either cut something out,
    ``truncated`` is set (read it after iterating) and ``why`` says why.
    Names in ``skip_top`` are left out at the top level. A directory that cannot be read (or
    vanishes meanwhile) is left out silently: the files of a job may change while it is listed.
    """

    def __init__(self, top: Path, *, max_depth: int = MAX_DEPTH,
                 max_scanned: int = MAX_SCANNED, skip_top: Collection[str] = ()) -> None:
        self.top = top
        self.max_depth = max_depth
        self.budget = max_scanned
        self.skip_top = frozenset(skip_top)
        self.truncated = False
        self.exhausted = False
        self.why = ""

    def _stop(self, why: str) -> None:
        self.truncated = True
        self.why = self.why or why

    def _names(self, directory: int | Path) -> list[os.DirEntry[str]] | None:
        """The entries of the directory ``directory`` (a descriptor, or the top's path),
        sorted; None when over the budget."""
        entries = []
        with os.scandir(directory) as it:
            for entry in it:
                if self.budget <= 0:
                    self.exhausted = True
                    self._stop("more entries than the bound")
                    return None
                self.budget -= 1
                entries.append(entry)
        entries.sort(key=lambda e: e.name)
        return entries

    def __iter__(self) -> Iterator[Entry]:
        # The top is trusted and listed by its path (fewer system calls than through a
        # descriptor): its entries are looked at, and its folders entered, by their paths with
        # the last component never followed; below, everything goes through descriptors.
        try:
            entries = self._names(self.top)
        except OSError:
            return
        if entries is None:
            return
        # A stack of (directory descriptor, None for the top; its prefix; its remaining
        # entries).
        stack: list[tuple[int | None, str, Iterator[os.DirEntry[str]]]] = [
            (None, "", iter(e for e in entries if e.name not in self.skip_top))]
        try:
            while stack and not self.exhausted:
                fd, prefix, remaining = stack[-1]
                entry = next(remaining, None)
                if entry is None:
                    if (done := stack.pop()[0]) is not None:
                        os.close(done)
                    continue
                yield from self._visit(fd, prefix, entry, len(stack), stack)
        finally:
            for fd, _, _ in stack:
                if fd is not None:
                    os.close(fd)

    def _visit(self, fd: int | None, prefix: str, entry: os.DirEntry[str], depth: int,
               stack: list[tuple[int | None, str, Iterator[os.DirEntry[str]]]]
               ) -> Iterator[Entry]:
        path = prefix + entry.name
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:  # gone meanwhile
            return
        if stat.S_ISLNK(info.st_mode):
            yield Entry(path, "symlink")
        elif stat.S_ISREG(info.st_mode):
            yield Entry(path, "file", info.st_size)
        elif not stat.S_ISDIR(info.st_mode):
            yield Entry(path, "other")
        else:
            yield Entry(path, "dir")
            if depth >= self.max_depth:
                self._stop(f"directories deeper than {self.max_depth} levels")
                return
            try:
                child = (os.open(entry.path, DIR_FLAGS) if fd is None
                         else os.open(entry.name, DIR_FLAGS, dir_fd=fd))
            except OSError:  # replaced by a link or removed meanwhile: not entered
                return
            try:
                entries = self._names(child)
            except OSError:
                os.close(child)
                return
            if entries is None:
                os.close(child)
                return
            stack.append((child, path + "/", iter(entries)))
