"""Forging the standalone job script a job runs as.

The script needs nothing but itself and its job directory: every value it uses is written into it,
shell-quoted. It runs the command with stdin from /dev/null, saves stdout and stderr into the job
directory, and records the exit code in ``.execd/exit_code`` (the engine's truth about how a job
ended, since schedulers forget finished jobs). A TERM sent to the job (a kill) is let through to
the command; the script then still records the code (143).

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
)

#: Exit code of the script when it cannot enter its job directory (the command never ran).
NO_JOB_DIR_EXIT = 97
#: The descriptor a Local slot lock is passed on; the command runs without it.
SLOT_FD = 9


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
    run = body if body is not None else (
        f"{' '.join(q(a) for a in command)} </dev/null >{STDOUT_NAME} 2>{STDERR_NAME} "
        f"{SLOT_FD}>&-"
    )
    return f"""#!/bin/sh
# Job script forged by execd for job {job_id}. It needs nothing but itself and its job
# directory; it records the exit code in {EXIT_CODE_NAME}.
cd {q(job_dir)} || exit {NO_JOB_DIR_EXIT}
echo $$ >{PID_NAME}
# A TERM (a kill) goes to the command; the script waits for it and records its code.
trap 'execd_term=1' TERM
{exports}
# A TERM that came before the command started (it reaches only what runs): nothing starts.
[ -z "${{execd_term-}}" ] || {{ echo 143 >{EXIT_CODE_NAME}; exit 143; }}
{run}
execd_code=$?
echo "$execd_code" >{EXIT_CODE_NAME}
exit "$execd_code"
"""


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
    with safefs.opened_dirs(root, relative.as_posix(), create=True) as fd:
        engine_fd = safefs.open_dir_at(fd, ENGINE_DIR, job_dir / ENGINE_DIR, create=True)
        try:
            for folder in (engine_fd, fd):
                if mode is not None:
                    os.fchmod(folder, mode)
                if owner is not None:
                    os.fchown(folder, *owner)
            if script is not None:
                safefs.write_file_at(engine_fd, SCRIPT_FILE, script.encode(),
                                     job_dir / ENGINE_DIR / SCRIPT_FILE, mode=0o755)
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


__all__ = ["ENGINE_DIR", "NO_JOB_DIR_EXIT", "SLOT_FD", "UnsafePathError", "forge_script",
           "job_environment", "make_job_dir", "write_script"]
