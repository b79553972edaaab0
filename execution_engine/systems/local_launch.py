"""How the Local system starts a job script: directly, or through a launcher that first sets
what only the starting process may set (the job's memory limit) and then becomes the job's
account.

The launcher is a fixed shell text run with ``sh -c``; every value it gets (the cgroup, the
limit, the account's ids, the script) is a positional argument, never part of the text, so no
value reaches a shell unquoted. It runs as the daemon's account (root when jobs run as their
owners) and never reads a file of the job: the job's account owns the job directory, so the
script is opened only after the switch, by the account itself (``setpriv`` executes
``/bin/sh <script>``). A root process that ran ``<job dir>/.execd/job.sh`` would run whatever
the account put there.

In order, each step only when asked for:

1. join the job's memory cgroup (its pid into ``cgroup.procs``: the script, the command and
   every descendant then start inside it), or set ``ulimit -v``; a failure is not fatal here
   but passed on as ``EXECD_NO_LIMIT`` (the script then records it and exits without running
   the command: a job never runs without its limit);
2. switch to the account's uid, gid and supplementary groups (``setpriv``; capabilities go with
   root), the environment already the account's (HOME, USER, LOGNAME, SHELL: set by the system);
3. ``exec /bin/sh <script>``: the same process all along (pid, session, slot descriptor), so
   the native id, the kills of the process group and the slot locks are as for any job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from execution_engine.jobscript import NO_LIMIT_ENV

SHELL = "/bin/sh"
SETPRIV = "/usr/bin/setpriv"

_LAUNCHER = f"""\
[ -z "$1" ] || echo $$ >"$1/cgroup.procs" ||
  export {NO_LIMIT_ENV}="cannot join the memory cgroup $1"
[ -z "$2" ] || ulimit -v "$2" || export {NO_LIMIT_ENV}="cannot set ulimit -v $2"
[ -n "$3" ] || exec {SHELL} "$6"
[ -z "$5" ] || exec {SETPRIV} --reuid="$3" --regid="$4" --groups="$5" -- {SHELL} "$6"
exec {SETPRIV} --reuid="$3" --regid="$4" --clear-groups -- {SHELL} "$6"
"""
LAUNCHER_NAME = "execd-launch"
"""``$0`` of the launcher: how it shows in ``ps`` for the moment it runs."""


@dataclass(frozen=True)
class Launch:
    """What is set before the job script runs; an empty launch starts the script directly."""

    cgroup: Path | None = None
    ulimit_kib: int | None = None
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()

    @property
    def direct(self) -> bool:
        """Nothing to set first: the script is started as is (one exec fewer)."""
        return self.cgroup is None and self.ulimit_kib is None and self.uid is None

    def argv(self, script: Path) -> list[str]:
        """The argument vector starting ``script`` with this launch."""
        if self.direct:
            return [SHELL, str(script)]
        return [SHELL, "-c", _LAUNCHER, LAUNCHER_NAME,
                "" if self.cgroup is None else str(self.cgroup),
                "" if self.ulimit_kib is None else str(self.ulimit_kib),
                "" if self.uid is None else str(self.uid),
                "" if self.gid is None else str(self.gid),
                ",".join(map(str, self.groups)),
                str(script)]


def is_job_command_line(argv: Sequence[bytes], script: Path) -> bool:
    """Whether ``argv`` (a process's ``/proc/<pid>/cmdline``) is the job script's process at
    one of its stages: the launcher, ``setpriv``, or the script itself."""
    if not argv or argv[-1] != str(script).encode():
        return False
    if list(argv) == [SHELL.encode(), str(script).encode()]:
        return True
    return (argv[0] == SETPRIV.encode()
            or argv[:4] == [SHELL.encode(), b"-c", _LAUNCHER.encode(), LAUNCHER_NAME.encode()])


__all__ = ["LAUNCHER_NAME", "SETPRIV", "SHELL", "Launch", "is_job_command_line"]
