"""What the Local system enforces of a job's requirements besides its slots: memory, CPUs, and the
clock its walltime is measured on.

**Memory** is enforced by the kernel's memory controller where the host has one the daemon can
use, else by an address-space limit (:func:`choose_memory_method`, once per process):

* ``cgroup2``: the unified hierarchy offers the ``memory`` controller. One cgroup per job,
  ``<parent>/execd/<system>/<job tag>``, with ``memory.max``, no swap (``memory.swap.max`` 0)
  and ``memory.oom.group`` 1 (an out-of-memory kill ends the whole job, not one process of it).
* ``cgroup1``: a v1 ``memory`` hierarchy. The same layout, with ``memory.limit_in_bytes``, no
  swap (``memory.memsw.limit_in_bytes`` equal to it where swap is accounted) and
  ``memory.swappiness`` 0.
* ``ulimit``: ``ulimit -v`` (the address space of each process of the job, not its resident
  memory). An allocation beyond it fails inside the program, which ends as it pleases: the
  engine cannot tell that the limit was the cause, and derives the reason from the exit code.
* ``none``: the option ``memory_limit = none``.

``<parent>`` is the daemon's own cgroup (or ``cgroup_parent``): jobs stay inside what the
daemon itself was given (a service manager's delegation, a container's limits). The job's
process joins its cgroup before its script starts (:mod:`~execution_engine.systems.local_launch`,
as the daemon's account, before any switch to the job's). Once the job has
ended, an out-of-memory kill counted in its cgroup (:func:`oom_killed`) is the evidence of
``memory_exceeded``, and the cgroup is removed; cgroups left by a crash are removed when seen
(:func:`sweep`).

**CPUs**: a job asking ``cores`` is pinned to that many CPUs (:func:`cpus_for`), chosen from the
slots it holds, so that jobs holding different slots do not share CPUs while there are no more
slots than CPUs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP2 = "cgroup2"
CGROUP1 = "cgroup1"
ULIMIT = "ulimit"
NONE = "none"

ENGINE_CGROUP = "execd"
"""The folder below the parent cgroup that holds every system's job cgroups."""

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""Units of the process start times in ``/proc/<pid>/stat``, per second."""

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


# ---------------------------------------------------------------------- clocks
def seconds_since_start(start_ticks: int) -> float:
    """How long ago a process started, from its start time in clock ticks since boot (the
    second part of a Local native id)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / CLOCK_TICKS


# ---------------------------------------------------------------------- CPUs
def cpus_for(slot_indexes: Sequence[int], count: int, allowed: Sequence[int]) -> set[int] | None:
    """The ``count`` CPUs a job holding ``slot_indexes`` is pinned to, or None when it may use
    every CPU of ``allowed`` (it asks at least as many). Slot ``i`` maps to CPU
    ``allowed[i % len(allowed)]``; CPUs that two of its slots share are made up from the others,
    in order."""
    if not allowed or count >= len(allowed):
        return None
    chosen: list[int] = []
    for index in slot_indexes:
        cpu = allowed[index % len(allowed)]
        if cpu not in chosen:
            chosen.append(cpu)
    chosen.extend(cpu for cpu in allowed if cpu not in chosen)
    return set(chosen[:count])


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the block with the calling thread pinned to ``cpus`` (nothing when None), then
    restore its affinity. On Linux the affinity is per thread and a process this thread
    spawns inherits it: a job spawned in the block is pinned from its first instruction."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------------- memory: the method
@dataclass(frozen=True)
class MemoryMethod:
    """How a system's jobs get their memory limit on this host."""

    kind: str
    """:data:`CGROUP2`, :data:`CGROUP1`, :data:`ULIMIT` or :data:`NONE`."""
    root: Path | None = None
    """The cgroup the jobs' cgroups are made in (cgroup methods only)."""
    note: str = ""
    """Why a better method is not used, when one was tried."""

    @property
    def uses_cgroups(self) -> bool:
        return self.kind in (CGROUP2, CGROUP1)

    def describe(self) -> str:
        """The method in words, as ``execd systems`` shows it."""
        if self.kind == CGROUP2:
            said = (f"cgroup v2 memory controller: one cgroup per job below {self.root} "
                    "(memory.max, no swap, the whole job killed when out of memory)")
        elif self.kind == CGROUP1:
            said = (f"cgroup v1 memory controller: one cgroup per job below {self.root} "
                    "(memory.limit_in_bytes, no swap)")
        elif self.kind == ULIMIT:
            said = ("ulimit -v: the address space of each process (an excess fails inside the "
                    "program; its cause is not known to the engine)")
        else:
            said = "not enforced (memory_limit = none)"
        return f"{said}; {self.note}" if self.note else said


def choose_memory_method(system: str, wanted: str, parent: str = "", *,
                         set_up: bool = True) -> MemoryMethod:
    """The best memory method of :data:`CGROUP2`, :data:`CGROUP1`, :data:`ULIMIT` this process
    can use for system ``system`` (``wanted``: the option ``memory_limit``, ``auto``,
    ``ulimit`` or ``none``). ``parent``: the cgroup (a path inside the hierarchy) below which
    jobs' cgroups go; empty: this process's own.

    With ``set_up`` the cgroup folders are made (and v2's controller enabled on the way) and
    the first method that works is taken; without, nothing is written and a cgroup method is
    taken when its folder is writable (what ``execd systems`` shows before the daemon has run).
    Never raises: what did not work is said in the method's ``note``.
    """
    if wanted == NONE:
        return MemoryMethod(NONE)
    if wanted == ULIMIT:
        return MemoryMethod(ULIMIT)
    notes: list[str] = []
    v2_mount, v1_mount = _cgroup_mounts()
    own_v2, own_v1 = _own_cgroups()
    for kind, mount, own in ((CGROUP2, v2_mount, own_v2), (CGROUP1, v1_mount, own_v1)):
        if mount is None:
            continue
        base = _join(mount, parent or own)
        if base is None:
            notes.append(f"{_label(kind)}: this process's cgroup is not below {mount[0]}")
            continue
        root = base / ENGINE_CGROUP / cgroup_name(system)
        try:
            _prepare(kind, base, root, set_up=set_up)
        except OSError as exc:
            notes.append(f"{_label(kind)}: {_strerror(exc)}")
            continue
        return MemoryMethod(kind, root, "; ".join(notes))
    if v2_mount is None and v1_mount is None:
        notes.append("no cgroup hierarchy is mounted")
    return MemoryMethod(ULIMIT, None, "; ".join(notes))


def _label(kind: str) -> str:
    return "cgroup v2" if kind == CGROUP2 else "cgroup v1"


def _strerror(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _prepare(kind: str, base: Path, root: Path, *, set_up: bool) -> None:
    """Make ``root`` a usable parent of job cgroups (OSError naming what fails)."""
    if kind == CGROUP2:
        controllers = (base / "cgroup.controllers").read_text().split()
        if "memory" not in controllers:
            raise OSError(errno.ENOTSUP, "the memory controller is not available",
                          str(base / "cgroup.controllers"))
    elif not (base / "memory.limit_in_bytes").exists():
        raise OSError(errno.ENOTSUP, "not a memory cgroup", str(base))
    if not set_up:
        existing = root if root.is_dir() else base
        if not os.access(existing, os.W_OK):
            raise OSError(errno.EACCES, "cannot write", str(existing))
        return
    if kind == CGROUP2:
        # Each level enables the controller for the next; the parent must have no processes
        # of its own for that (EBUSY otherwise: give the daemon a cgroup_parent).
        _enable_memory(base)
        for folder in (root.parent, root):
            folder.mkdir(exist_ok=True)
            _enable_memory(folder)
    else:
        root.mkdir(parents=True, exist_ok=True)
    if not (root / "cgroup.procs").exists():
        raise OSError(errno.ENOTSUP, "not a cgroup", str(root))


def _enable_memory(folder: Path) -> None:
    control = folder / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        _write(control, "+memory")


def _cgroup_mounts() -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """The unified hierarchy's and the v1 memory hierarchy's (mount point, root inside the
    hierarchy), each None when not mounted."""
    v2: tuple[str, str] | None = None
    v1: tuple[str, str] | None = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        mount_fields, _, fs_fields = line.partition(" - ")
        fields, fs = mount_fields.split(), fs_fields.split()
        if len(fields) < 5 or len(fs) < 3:
            continue
        where = (_unescape(fields[4]), _unescape(fields[3]))
        if fs[0] == "cgroup2" and v2 is None:
            v2 = where
        elif fs[0] == "cgroup" and "memory" in fs[2].split(",") and v1 is None:
            v1 = where
    return v2, v1


def _unescape(field: str) -> str:
    """A mountinfo path field (spaces and the like are octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_cgroups() -> tuple[str, str]:
    """This process's cgroup in the unified hierarchy and in the v1 memory hierarchy."""
    v2 = v1 = "/"
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        number, controllers, path = [*line.split(":", 2), "", ""][:3]
        if number == "0" and not controllers:
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _join(mount: tuple[str, str], cgroup: str) -> Path | None:
    """The folder of ``cgroup`` (a path inside the hierarchy) under the mount ``(mount point,
    root of the mount inside the hierarchy)``; None when the mount does not show it."""
    point, mount_root = mount
    parts = [p for p in cgroup.split("/") if p]
    root_parts = [p for p in mount_root.split("/") if p]
    if ".." in parts or parts[:len(root_parts)] != root_parts:
        return None
    return Path(point, *parts[len(root_parts):])


# ---------------------------------------------------------------------- memory: per job
def cgroup_name(tag: str) -> str:
    """The folder name of the cgroup of the job tagged ``tag``: the tag itself when it is a
    plain name, else a digest of it (a job id may hold any character)."""
    if _SAFE_NAME.match(tag):
        return tag
    return "execd-" + hashlib.sha256(tag.encode()).hexdigest()[:32]


def job_cgroup(method: MemoryMethod, tag: str) -> Path | None:
    """Where the cgroup of the job tagged ``tag`` is (or would be); None without cgroups."""
    if not method.uses_cgroups or method.root is None:
        return None
    return method.root / cgroup_name(tag)


def make_job_cgroup(method: MemoryMethod, tag: str, memory_mb: int) -> Path:
    """Make the job's cgroup with its limit: ``memory_mb`` MiB, no swap. A cgroup left by an
    earlier run of the same tag is made again (fresh counters), or reused when something still
    runs in it. Raises OSError (after removing what it made) when the limit cannot be set."""
    path = job_cgroup(method, tag)
    if path is None:
        raise OSError(errno.ENOTSUP, "no cgroup method in use")
    try:
        path.mkdir()
    except FileExistsError:
        if remove_cgroup(path):
            path.mkdir()
    except FileNotFoundError:  # the system's folder was removed meanwhile (another actor's close)
        _prepare(method.kind, path.parent.parent.parent, path.parent, set_up=True)
        path.mkdir()
    try:
        _set_limit(method.kind, path, memory_mb * 1024 * 1024)
    except OSError:
        remove_cgroup(path)
        raise
    return path


def _set_limit(kind: str, path: Path, limit: int) -> None:
    if kind == CGROUP2:
        _write(path / "memory.max", str(limit))
        if (path / "memory.swap.max").exists():  # absent when swap is not accounted
            _write(path / "memory.swap.max", "0")
        _write(path / "memory.oom.group", "1")
        return
    _write(path / "memory.limit_in_bytes", str(limit))
    if (path / "memory.memsw.limit_in_bytes").exists():  # memory plus swap: no swap at all
        _write(path / "memory.memsw.limit_in_bytes", str(limit))
    with contextlib.suppress(OSError):  # refused by some kernels below the root: memsw rules
        _write(path / "memory.swappiness", "0")


def oom_killed(method: MemoryMethod, path: Path, *, killed_by_sigkill: bool) -> bool:
    """Whether the kernel killed a process of the job's cgroup ``path`` for want of memory:
    v2 ``memory.events`` ``oom_kill``; v1 ``memory.oom_control`` ``oom_kill`` (kernels from
    4.13), or on older kernels the limit hit (``memory.failcnt``) by a job that ended by
    SIGKILL. False when the cgroup is gone or unreadable (no evidence)."""
    try:
        if method.kind == CGROUP2:
            counts = _counters(path / "memory.events")
            return counts.get("oom_kill", 0) > 0 or counts.get("oom_group_kill", 0) > 0
        counts = _counters(path / "memory.oom_control")
        if "oom_kill" in counts:
            return counts["oom_kill"] > 0
        failures = int((path / "memory.failcnt").read_text())
    except (OSError, ValueError):
        return False
    return killed_by_sigkill and failures > 0


def _counters(path: Path) -> dict[str, int]:
    counts = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            counts[key] = int(value)
    return counts


def remove_cgroup(path: Path) -> bool:
    """Remove the job cgroup ``path``; False while processes are still in it (the job left
    some behind) or when it cannot be removed now."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            log.warning("cannot remove the cgroup %s: %s", path, exc)
        return False
    return True


def remove_root(method: MemoryMethod) -> None:
    """Remove the system's folder of job cgroups and the engine's folder above it, when they
    are empty (no job cgroup left): a stopped daemon leaves nothing in its cgroup."""
    if not method.uses_cgroups or method.root is None:
        return
    for folder in (method.root, method.root.parent):
        if not remove_cgroup(folder):
            return


def sweep(method: MemoryMethod, keep: Iterable[str], min_age: float) -> int:
    """Remove the empty job cgroups of the system that are not named in ``keep`` and were made
    more than ``min_age`` seconds ago (a job being submitted has not joined its cgroup yet):
    leftovers of jobs whose end was recorded by an actor that died before it removed them.
    Returns how many were removed."""
    if not method.uses_cgroups or method.root is None:
        return 0
    kept = set(keep)
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(method.root))
    except OSError:
        return 0
    for entry in entries:
        if entry.name in kept or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                continue
        except OSError:
            continue
        removed += remove_cgroup(Path(entry.path))
    return removed


def _write(path: Path, text: str) -> None:
    """Write a cgroup control file (one ``write(2)``: the kernel takes it whole or refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


__all__ = ["CGROUP1", "CGROUP2", "CLOCK_TICKS", "NONE", "ULIMIT", "MemoryMethod", "cgroup_name",
           "choose_memory_method", "cpus_for", "job_cgroup", "make_job_cgroup", "oom_killed",
           "pinned", "remove_cgroup", "remove_root", "seconds_since_start", "sweep"]
