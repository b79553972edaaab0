"""What an execution system records of a job under the job directory's ``.execd/``.

A job document is writable by clients, so its ``native_id`` proves nothing: a forged document
could name another user's scheduler job or any process of the host. Before a system acts on a
job (kill, hold, release) it checks the id against what the engine itself wrote when it
submitted the job, in the job directory the engine computed (``JobSpec.job_dir``):

* ``.execd/native_id``: the native id the scheduler gave at submission (batch and DRMAA
  systems), written by ``run`` (and by ``find`` when it recognises the job by its tag);
* ``.execd/pid``: the pid of the job script, written by the script itself as its first step
  (Local, see :mod:`execution_engine.jobscript`);
* ``.execd/kill``: the signal the engine sent (or the cancellation it asked for), written just
  before it does. A job that then ends without success is reported ``killed``
  (:func:`execution_engine.systems.base.ended_report`), whatever its scheduler says after the
  fact (Torque shows every end as ``C``, DRMAA forgets jobs of other sessions);
* ``.execd/limit``: a limit of the job's the system enforced (Local: the walltime it ended the
  job for, the memory limit the kernel killed it at), with when the job was first signalled
  for it, written before the signal: why the job ended survives a restart of the actor;
* ``.execd/no_limit``: written by the job script when it could not apply the memory limit it
  was given (the command did not run).

Records are read and written without following symbolic links below the job directory
(:mod:`execution_engine.safefs`): a job may put anything into its directory.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from execution_engine import safefs

log = logging.getLogger(__name__)

ENGINE_DIR = ".execd"
NATIVE_ID_NAME = f"{ENGINE_DIR}/native_id"
KILL_NAME = f"{ENGINE_DIR}/kill"
LIMIT_NAME = f"{ENGINE_DIR}/limit"
NO_LIMIT_NAME = f"{ENGINE_DIR}/no_limit"
#: Records are a line or two; anything longer is not one of ours.
MAX_RECORD = 4096


def read_record(job_dir: Path, name: str) -> str | None:
    """The text of the record ``name`` (relative to ``job_dir``), stripped, or None when it is
    missing, unreadable, too long or reached through a symbolic link."""
    try:
        fd = safefs.open_file(job_dir, name)
    except (OSError, ValueError):
        return None
    try:
        data = os.read(fd, MAX_RECORD + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_RECORD:
        return None
    try:
        return data.decode().strip()
    except UnicodeDecodeError:
        return None


def write_record(job_dir: Path, name: str, text: str) -> bool:
    """Write the record ``name``; False (and a warning) when it cannot be written, so that the
    caller goes on: a missing record only makes later checks stricter."""
    try:
        safefs.write_file(job_dir, name, f"{text}\n".encode())
    except (OSError, ValueError) as exc:
        log.warning("cannot record %s in %s: %s", name, job_dir, exc)
        return False
    return True


def record_native_id(job_dir: Path, native_id: str) -> bool:
    """Record the native id a job was submitted as."""
    return write_record(job_dir, NATIVE_ID_NAME, native_id)


def recorded_native_id(job_dir: Path) -> str | None:
    """The native id recorded at submission, or None."""
    return read_record(job_dir, NATIVE_ID_NAME) or None


def record_kill(job_dir: Path, native_id: str, what: str) -> bool:
    """Record that the engine is about to kill the job submitted as ``native_id`` (``what``:
    the signal or action). The id keeps a record from an earlier run of the same directory from
    speaking for a later one."""
    return write_record(job_dir, KILL_NAME, f"{native_id}\n{what}")


def recorded_kill(job_dir: Path, native_id: str | None) -> str | None:
    """What the engine sent to kill the job submitted as ``native_id``, or None when it never
    killed that one."""
    text = read_record(job_dir, KILL_NAME)
    if text is None or native_id is None:
        return None
    killed, _, what = text.partition("\n")
    return what.strip() or "kill" if killed == native_id else None


def record_limit(job_dir: Path, native_id: str, reason: str, since: float) -> bool:
    """Record that the job submitted as ``native_id`` exceeded a limit (``reason``: a
    :class:`~execution_engine.reasons.Reason` value), ``since`` (Unix time) being when the
    engine first signalled it for that (0 when it did not: the kernel did)."""
    return write_record(job_dir, LIMIT_NAME, f"{native_id}\n{reason}\n{since:.3f}")


def recorded_limit(job_dir: Path, native_id: str | None) -> tuple[str, float] | None:
    """The reason and time :func:`record_limit` recorded for the job submitted as
    ``native_id``, or None (none recorded, one of an earlier run, or unreadable). The job can
    write this file too: callers trust it only as far as it can harm the job itself."""
    text = read_record(job_dir, LIMIT_NAME)
    if text is None or native_id is None:
        return None
    lines = text.split("\n")
    if len(lines) != 3 or lines[0] != native_id or not lines[1]:
        return None
    try:
        since = float(lines[2])
    except ValueError:
        return None
    return (lines[1], since) if math.isfinite(since) else None


__all__ = ["KILL_NAME", "LIMIT_NAME", "NATIVE_ID_NAME", "NO_LIMIT_NAME", "read_record",
           "record_kill", "record_limit", "record_native_id", "recorded_kill", "recorded_limit",
           "recorded_native_id", "write_record"]
