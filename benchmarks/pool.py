"""The benchmark's yardstick: a plain subprocess pool running the same job scripts.

The job directories are forged as the Building actor forges them (same script, same environment),
and each script is started as the Local system starts it (``/bin/sh <script>`` with stdin from
``/dev/null`` and the script's own messages appended to one shared log, opened once), at most
``concurrency`` at a time: what the engine does for a job minus the engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from execution_engine.jobscript import (
    USAGE_ENV,
    forge_script,
    job_environment,
    make_job_dir,
    write_script,
)
from execution_engine.systems.base import SCRIPT_NAME

SHELL = "/bin/sh"
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"


def forge_job_dirs(root: Path, count: int, command: Sequence[str], *,
                   project: str = "bench") -> list[Path]:
    """``count`` built job directories under ``root``; returns their script paths."""
    return [forge_job_dir(root / project / f"pool-{index:06d}", command, project=project)
            for index in range(count)]


def forge_job_dir(job_dir: Path, command: Sequence[str], *, project: str = "bench") -> Path:
    """One job directory as the Building actor makes it; returns its script path."""
    job_id = job_dir.name
    make_job_dir(job_dir)
    text = forge_script(
        job_id=job_id, job_dir=str(job_dir), command=list(command),
        environment=job_environment(job_id=job_id, name=command[0], job_dir=str(job_dir),
                                    project=project, owner=None, job_path=JOB_PATH),
    )
    script = job_dir / SCRIPT_NAME
    write_script(script, text)
    return script


@dataclass(frozen=True)
class PoolRun:
    seconds: float
    own_cpu_s: float
    """CPU seconds of the pool itself (spawning and reaping)."""
    jobs_cpu_s: float
    """CPU seconds of the job scripts."""


def run_pool(scripts: Sequence[Path], concurrency: int) -> PoolRun:
    """Run every script, ``concurrency`` at a time. Raises RuntimeError when a script fails
    (the comparison would be meaningless)."""
    # The scripts run as Local runs them: without GNU time (Local records usage itself).
    env = {"PATH": JOB_PATH, "LANG": "C.UTF-8", USAGE_ENV: "local"}
    pending = list(reversed(scripts))
    running: dict[int, Path] = {}
    failures = []
    log_fd = os.open(scripts[0].parent.parent.parent / "jobs.log",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    times = os.times()
    began = time.perf_counter()
    while pending or running:
        while pending and len(running) < concurrency:
            script = pending.pop()
            running[_spawn(script, env, log_fd)] = script
        pid, status = os.wait()
        done = running.pop(pid, None)
        if done is not None and os.waitstatus_to_exitcode(status) != 0:
            failures.append(done)
    elapsed = time.perf_counter() - began
    after = os.times()
    os.close(log_fd)
    if failures:
        raise RuntimeError(f"{len(failures)} pool jobs failed, e.g. {failures[0]}")
    return PoolRun(elapsed, after.user + after.system - times.user - times.system,
                   after.children_user + after.children_system - times.children_user
                   - times.children_system)


def _spawn(script: Path, env: dict[str, str], log_fd: int) -> int:
    return os.posix_spawn(
        SHELL, [SHELL, str(script)], env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ],
        setsid=True,
    )
