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

import shlex
from collections.abc import Mapping, Sequence

from execution_engine.systems.base import (
    ENGINE_DIR,
    EXIT_CODE_NAME,
    PID_NAME,
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
{run}
execd_code=$?
echo "$execd_code" >{EXIT_CODE_NAME}
exit "$execd_code"
"""


__all__ = ["ENGINE_DIR", "NO_JOB_DIR_EXIT", "SLOT_FD", "forge_script", "job_environment"]
