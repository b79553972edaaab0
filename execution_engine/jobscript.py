"""Forging the standalone job script a job runs as.

The script needs nothing but itself and its job directory: every value it uses is written into it,
shell-quoted. It runs the command with stdin from /dev/null, saves stdout and stderr into the job
directory, and records the exit code in ``.execd/exit_code`` (the engine's truth about how a job
ended, since schedulers forget finished jobs). A TERM sent to the job (a kill) is let through to
the command; the script then still records the code (143).

Limits and usage (see docs/systems.md, "Local"):

* The memory limit is set before the script starts, by the process that starts it (Local:
  :mod:`execution_engine.systems.local_launch`), which then passes ``EXECD_NO_LIMIT`` when it
  could not set it. The command then never runs: the script says why on its stderr and in
  ``.execd/no_limit`` and exits :data:`NO_LIMIT_EXIT`. The variable does not reach the
  command.
* The command runs under GNU time (``/usr/bin/time``, when it is there at run time), which
  writes what it used into ``.execd/usage`` (``key=value`` lines: ``wall``, ``user``, ``sys``,
  ``maxrss_kb``); without it the command runs as is. A system that records usage itself (Local,
  from the rusage of the reaped script) passes ``EXECD_USAGE`` and the command runs as is: one
  process fewer per job. Exit codes, redirections and the closing of the slot descriptor are
  the same either way. A forged body (``body=``, application phases) runs in the script's own
  shell and is never wrapped.

The environment of a job is: the variables the execution system gives (none for Local but a
minimal PATH/HOME/USER/LANG), then ``PATH`` from ``[engine] job_path``, ``EXECD_JOB_ID``,
``EXECD_JOB_NAME``, ``EXECD_JOB_DIR``, ``EXECD_PROJECT``, ``EXECD_OWNER``, then the job's own
``environment`` (which may override any of them).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from execution_engine import safefs
from execution_engine.safefs import UnsafePathError
from execution_engine.systems.base import (
    ENGINE_DIR,
    EXIT_CODE_NAME,
    PID_NAME,
    SCRIPT_FILE,
    STDERR_NAME,
    STDOUT_NAME,
    USAGE_NAME,
)
from execution_engine.systems.records import NO_LIMIT_NAME

#: Exit code of the script when it cannot enter its job directory (the command never ran).
NO_JOB_DIR_EXIT = 97
#: Exit code of the script when it cannot apply the memory limit it was given (the command
#: never ran: it does not run without its limit).
NO_LIMIT_EXIT = 98
#: The descriptor a Local slot lock is passed on; the command runs without it.
SLOT_FD = 9
#: Variables an execution system may start the script with (none of them reaches the command):
#: why the memory limit the job asks for could not be set (the command then never runs), and
#: "the system records the usage itself" (no GNU time).
NO_LIMIT_ENV = "EXECD_NO_LIMIT"
USAGE_ENV = "EXECD_USAGE"
#: GNU time, used when it is executable where the job runs.
GNU_TIME = "/usr/bin/time"
#: GNU time's format: the ``key=value`` lines :func:`execution_engine.systems.base.read_usage`
#: reads (GNU time turns the ``\\n`` into new lines).
USAGE_FORMAT = r"wall=%e\nuser=%U\nsys=%S\nmaxrss_kb=%M"


def job_environment(
    *,
    job_id: str,
    name: str,
    job_dir: str,
    project: str,
    owner: str | None,
    job_path: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables the script exports, in order."""
    env = {
        "PATH": job_path,
        "EXECD_JOB_ID": job_id,
        "EXECD_JOB_NAME": name,
        "EXECD_JOB_DIR": job_dir,
        "EXECD_PROJECT": project,
        "EXECD_OWNER": owner or "",
    }
    env.update(extra or {})
    return env


def forge_script(
    *,
    job_id: str,
    job_dir: str,
    command: Sequence[str],
    environment: Mapping[str, str],
    body: str | None = None,
) -> str:
    """The text of the job script.

    ``command`` is run as one argument vector (each item quoted, never re-split by a shell);
    ``body``, when given, replaces it with ready shell text (forged application phases) whose
    every substituted value the caller has already quoted.
    """
    q = shlex.quote
    exports = "\n".join(f"export {key}={q(value)}" for key, value in environment.items())
    run = f"{_TERM_CHECK}\n{body}\nexecd_code=$?" if body is not None else _run_command(command)
    return f"""#!/bin/sh
# Job script forged by execd for job {job_id}. It needs nothing but itself and its job
# directory; it records the exit code in {EXIT_CODE_NAME}.
{_LIMITS}
cd {q(job_dir)} || exit {NO_JOB_DIR_EXIT}
echo $$ >{PID_NAME}
{_NO_LIMIT}
# A TERM (a kill) goes to the command; the script waits for it and records its code.
{_TERM_TRAP}
{exports}
# The command (a TERM that came before it started ends the job: nothing runs).
{run}
echo "$execd_code" >{EXIT_CODE_NAME}
exit "$execd_code"
"""


# What the process that started the script says: the memory limit it could not set (the
# Local launcher, :mod:`execution_engine.systems.local_launch`), and that it records usage
# itself. Neither variable reaches the command.
_LIMITS = f"""\
execd_no_limit=${{{NO_LIMIT_ENV}-}}
execd_usage=${{{USAGE_ENV}-}}
unset {NO_LIMIT_ENV} {USAGE_ENV}"""

# Never run unlimited: a limit that could not be set ends the job before its command starts.
_NO_LIMIT = f"""\
if [ -n "${{execd_no_limit-}}" ]; then
  echo "execd: $execd_no_limit: the command does not run without its memory limit" >&2
  echo "$execd_no_limit" >{NO_LIMIT_NAME}
  echo {NO_LIMIT_EXIT} >{EXIT_CODE_NAME}
  exit {NO_LIMIT_EXIT}
fi"""


_TERM_TRAP = "trap 'execd_term=1' TERM"

# Right before the command: a TERM after this check reaches the command itself.
_TERM_CHECK = f'[ -z "${{execd_term-}}" ] || {{ echo 143 >{EXIT_CODE_NAME}; exit 143; }}'

# While the command is being started, TERM has its default action: a shell forked with the
# script's trap would keep it until it runs the command, and swallow a TERM that reached it
# before then (likeliest on a busy host, where the forked shell waits for a core before its
# first instruction). So a TERM from here on ends the script at once, and the command with it
# (the process group's), until the trap is set again once the command exists; a TERM noted
# before (the trap's) ends the job with 143 and nothing runs.
_START_COMMAND = f"trap - TERM\n{_TERM_CHECK}"

# The command runs in the background so that the script can wait for it with the trap set:
# ``wait`` returns early (143) when the trapped TERM arrives while the command still runs (the
# TERM reached the command too, with the process group), so after a TERM it is asked again as
# long as the command's process is there (running, or a zombie not reaped yet); once reaped,
# the last code ``wait`` gave is the command's own. Without a TERM, ``wait`` returned because
# the command ended: its code is final, and nothing more is asked (no process to look for).
_WAIT_COMMAND = f"""\
execd_child=$!
{_TERM_TRAP}
wait "$execd_child"
execd_code=$?
while [ -n "${{execd_term-}}" ] && kill -0 "$execd_child" 2>/dev/null; do
  wait "$execd_child"
  execd_code=$?
done"""


def run_waited(text: str) -> str:
    """The lines running ``text`` (one shell command, its redirections included) as the job's
    command is run, and setting ``execd_code`` to its exit code: started in the background with
    TERM at its default action, then waited for with the trap set. A TERM the script noted
    before (between two steps of an application's body, say) ends the job with 143 and nothing
    more runs; one that comes while it starts ends the script and it at once; one that comes
    while it runs reaches it, and the script records its code (:data:`_START_COMMAND`,
    :data:`_WAIT_COMMAND`)."""
    return f"{_START_COMMAND}\n{text} &\n{_WAIT_COMMAND}"


def _run_command(command: Sequence[str]) -> str:
    """The lines running ``command`` and setting ``execd_code`` to its exit code: under GNU
    time when it is there at run time and the system does not record usage itself, else as is;
    the same exit code (GNU time exits with the command's status, 128 + N for signal N, 126/127
    when it cannot run it), redirections and closing of the slot descriptor either way. A TERM
    that came before the command started ends the job with 143 and nothing runs; one that comes
    while it starts ends the script and the command at once (:data:`_START_COMMAND`)."""
    q = shlex.quote
    argv = " ".join(q(a) for a in command)
    redirections = f"</dev/null >{STDOUT_NAME} 2>{STDERR_NAME} {SLOT_FD}>&-"
    timed = f"{GNU_TIME} -q -o {USAGE_NAME} -f {q(USAGE_FORMAT)} -- {argv}"
    return (f"{_START_COMMAND}\n"
            f'if [ -z "$execd_usage" ] && [ -x {GNU_TIME} ]; then\n'
            f"  {timed} {redirections} &\n"
            f"else\n"
            f"  {argv} {redirections} &\n"
            f"fi\n"
            f"{_WAIT_COMMAND}")


def make_job_dir(job_dir: Path, jobs_dir: Path | None = None, *, mode: int | None = None,
                 owner: tuple[int, int] | None = None, script: str | None = None) -> None:
    """Make ``job_dir`` and its ``.execd`` folder below ``jobs_dir``, never through a symbolic
    link: every component below ``jobs_dir`` (the project's folder, the job's, ``.execd``) is
    opened relative to its parent without following links, and made when missing (mode 0777
    less the umask). A link planted at any of them raises :class:`UnsafePathError` naming the
    path (an ``OSError``), and nothing is made through it.

    ``jobs_dir`` is the trusted root (links in its own path are the administrator's); by
    default the grandparent of ``job_dir``, as in the layout ``<jobs_dir>/<project>/<id>``.
    Building again (the builder died, or a rebuild) finds the folders made and is harmless.

    ``mode`` and ``owner`` (uid, gid), when given, are set on the job's folder and its
    ``.execd`` through their open descriptors (``fchmod``/``fchown``, no path looked up again),
    for a job that runs as another account: the folders above them stay the engine's, so no
    other account can swap them meanwhile.

    ``script``, when given, is written as the job script (``.execd/job.sh``, as
    :func:`write_script` does) through the descriptors already open."""
    root = job_dir.parent.parent if jobs_dir is None else jobs_dir
    relative = job_dir.relative_to(root)  # ValueError: not below the root (an engine bug)
    with safefs.opened_dirs(root, relative.as_posix(), create=True, new_last=True) as fd:
        engine_fd = safefs.open_dir_at(fd, ENGINE_DIR, job_dir / ENGINE_DIR, create=True,
                                       new=True)
        try:
            # The script first, then the folders change hands: the account never holds a
            # folder the engine still writes into by name.
            if script is not None:
                safefs.write_file_at(engine_fd, SCRIPT_FILE, script.encode(),
                                     job_dir / ENGINE_DIR / SCRIPT_FILE, mode=0o755)
                if owner is not None:  # the account reads it (root never runs it: local_launch)
                    os.chown(SCRIPT_FILE, *owner, dir_fd=engine_fd, follow_symlinks=False)
            for folder in (engine_fd, fd):
                if mode is not None:
                    os.fchmod(folder, mode)
                if owner is not None:
                    os.fchown(folder, *owner)
        finally:
            os.close(engine_fd)


def write_script(path: Path, text: str, jobs_dir: Path | None = None) -> None:
    """Write an executable script in one go (created with its mode: no separate chmod).

    With ``jobs_dir``, ``path`` lies below it and no component below it is taken through a
    symbolic link; without, only the script's own name is (its folder is trusted). Either way a
    link, special file or hard-linked file standing at ``path`` raises UnsafePathError and is
    never written through."""
    if jobs_dir is None:
        with safefs.opened_dirs(path.parent, "") as fd:
            safefs.write_file_at(fd, path.name, text.encode(), path, mode=0o755)
    else:
        safefs.write_file(jobs_dir, path.relative_to(jobs_dir).as_posix(), text.encode(),
                          mode=0o755)


__all__ = [
    "ENGINE_DIR",
    "GNU_TIME",
    "NO_JOB_DIR_EXIT",
    "NO_LIMIT_ENV",
    "NO_LIMIT_EXIT",
    "SLOT_FD",
    "USAGE_ENV",
    "UnsafePathError",
    "forge_script",
    "job_environment",
    "make_job_dir",
    "run_waited",
    "write_script",
]
