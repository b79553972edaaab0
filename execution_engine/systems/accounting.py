"""What schedulers record about how a job ended and what it used: the evidence behind an ended
job's ``reason`` and ``usage``.

Each scheduler keeps its own record of a finished job:

* **Slurm**: the job's end state (``TIMEOUT``, ``OUT_OF_MEMORY``, ``NODE_FAIL``...), shown by
  ``squeue`` until ``MinJobAge``, then by the job completion log (``sacct -c``, jobcomp/filetxt)
  or the accounting database (``sacct``); with the start and end times and the node list.
* **Grid Engine**: the accounting file that ``qacct`` reads (``failed`` "37 : qmaster enforced
  h_rt, h_cpu, or h_vmem limit", ``exit_status``, ``ru_wallclock``, ``cpu``, ``maxvmem``,
  ``hostname``), and DRMAA's ``JobInfo`` of a job its session waits for (signal, aborted,
  resource usage).
* **Torque**: ``exit_status`` of a completed job in ``qstat -f`` (negative ``JOB_EXEC_*`` codes
  of the MOM, 256 + signal when the MOM killed the job) with ``resources_used`` and
  ``Resource_List``.

This module only parses and judges; the systems run the commands and read the files. A cause the
evidence does not show is ``None`` (the engine then derives the reason from the exit code),
never a guess.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from execution_engine.reasons import Reason
from execution_engine.systems.base import Resources, Usage


@dataclass(frozen=True)
class Evidence:
    """What a scheduler says about how one job ended."""

    reason: str | None = None
    """Why the job ended (a :class:`Reason` value) when the evidence shows it, else None."""
    usage: Usage | None = None
    """What the job used, as far as the scheduler recorded it."""
    said: str = ""
    """The scheduler's own words for the job's message ("" when it said nothing more)."""
    awaited: bool = False
    """The scheduler has not written its record yet: the job's end should wait for it."""


AWAITED = Evidence(awaited=True)
"""Evidence still to come (a record the scheduler writes a little after the job's end)."""


def usage_or_none(usage: Usage) -> Usage | None:
    """``usage`` if it holds a figure, else None."""
    return usage if usage.as_document() else None


def signal_name(number: int) -> str | None:
    """``SIGKILL`` for 9; None for a number that is no signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def exceeded_limits(resources: Resources, wall_s: float | None, memory_mb: float | None,
                    *, memory_enforced: bool = True) -> list[Reason]:
    """The requested limits a job reached: walltime when its wall time is at (within a second:
    schedulers count whole seconds) or over ``resources.walltime_s``; memory when
    ``memory_mb`` (the scheduler's largest measure of the job's memory) is at (within 2 %) or
    over ``resources.memory_mb`` and the scheduler enforces that request
    (``memory_enforced``). A limit the job did not request is never judged."""
    over = []
    if resources.walltime_s and wall_s is not None and wall_s >= resources.walltime_s - 1:
        over.append(Reason.WALLTIME_EXCEEDED)
    if (memory_enforced and resources.memory_mb and memory_mb is not None
            and memory_mb >= resources.memory_mb * 0.98):
        over.append(Reason.MEMORY_EXCEEDED)
    return over


def limit_reason(over: list[Reason], killed_from_outside: bool) -> str | None:
    """The reason of a job killed by a signal: the one limit it reached; when it reached none,
    or both (either may have been enforced), ``killed_by_system`` if the scheduler says it
    killed the job, else None (the command may have died of its own signal)."""
    if len(over) == 1:
        return over[0].value
    return Reason.KILLED_BY_SYSTEM.value if killed_from_outside else None


# ---------------------------------------------------------------------- Slurm
#: Slurm end states that say why a job ended. Others (COMPLETED, FAILED: the job's own exit
#: code; REVOKED: a federation's sibling ran it) say nothing the exit code does not.
SLURM_REASONS: Mapping[str, Reason] = {
    "TIMEOUT": Reason.WALLTIME_EXCEEDED,
    "DEADLINE": Reason.WALLTIME_EXCEEDED,
    "OUT_OF_MEMORY": Reason.MEMORY_EXCEEDED,
    "NODE_FAIL": Reason.NODE_FAILURE,
    "BOOT_FAIL": Reason.NODE_FAILURE,
    "PREEMPTED": Reason.PREEMPTED,
    "CANCELLED": Reason.KILLED_BY_SYSTEM,
}

#: The fields asked of ``sacct`` (``-o``): every one is filled by the jobcomp/filetxt log of
#: Slurm 22.05 (``sacct -c``) as well as by slurmdbd.
SACCT_FIELDS = ("jobid", "jobname", "state", "exitcode", "start", "end", "elapsed", "nodelist")

_NO_VALUE = frozenset({"", "unknown", "none", "n/a", "(null)", "none assigned", "invalid"})
_DURATION = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class SlurmRecord:
    """One job's line of ``sacct`` (or ``squeue``) output."""

    job_id: str
    state: str
    name: str = ""
    exit_code: str = ""
    start: datetime | None = None
    end: datetime | None = None
    elapsed_s: float | None = None
    nodes: str | None = None

    @property
    def wall_s(self) -> float | None:
        """Seconds from start to end; else the elapsed time Slurm gave; else None."""
        if self.start is not None and self.end is not None and self.end >= self.start:
            return (self.end - self.start).total_seconds()
        return self.elapsed_s

    def evidence(self) -> Evidence:
        """Why the job ended (from its state) and its wall time and nodes."""
        reason = SLURM_REASONS.get(self.state)
        return Evidence(reason=None if reason is None else reason.value,
                        usage=usage_or_none(Usage(wall_s=self.wall_s, node=self.nodes)))


def slurm_timestamp(text: str) -> datetime | None:
    """A Slurm time stamp (``2026-12-01T09:58:28``, local time); None for Unknown, None, N/A."""
    text = text.strip()
    if text.lower() in _NO_VALUE:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def slurm_duration(text: str) -> float | None:
    """Seconds of a Slurm duration (``[days-][hours:]minutes:seconds``); None if unreadable."""
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = match.groups()
    return (int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60
            + float(seconds))


def slurm_state(text: str) -> str:
    """The state word of ``CANCELLED by 0`` (slurmdbd) or ``RUNNING+`` (a federation)."""
    return text.strip().split(" ", 1)[0].rstrip("+")


def slurm_nodes(text: str) -> str | None:
    """The node list as Slurm wrote it (``node[01-04]``); None when no node was assigned."""
    text = text.strip()
    return None if text.lower() in _NO_VALUE else text


def parse_sacct_records(stdout: str) -> dict[str, SlurmRecord]:
    """``sacct [-c] -n -P -o`` :data:`SACCT_FIELDS` output -> job id -> record. Job steps
    (``123.batch``) are skipped; a later line of the same job (a requeued job) wins."""
    records = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < len(SACCT_FIELDS) or not parts[0] or "." in parts[0]:
            continue
        job_id, name, state, exit_code, start, end, elapsed, nodes = parts[:len(SACCT_FIELDS)]
        records[job_id] = SlurmRecord(
            job_id=job_id, name=name, state=slurm_state(state), exit_code=exit_code,
            start=slurm_timestamp(start), end=slurm_timestamp(end),
            elapsed_s=slurm_duration(elapsed), nodes=slurm_nodes(nodes))
    return records


# ---------------------------------------------------------------------- Grid Engine
#: ``failed`` codes of Grid Engine's accounting meaning that the system ended the job.
FAILED_LIMIT = 37
"""``37 : qmaster enforced h_rt, h_cpu, or h_vmem limit``."""
FAILED_KILLED = 100
"""``100 : assumedly after job``: ended by a signal the system sent (``qdel``, or a limit)."""

#: Grid Engine limits that it enforces by killing the job (a consumable such as ``mem_free``
#: only schedules).
ENFORCED_MEMORY_RESOURCES = frozenset({"h_vmem", "s_vmem"})

#: Fields of a line of Grid Engine's accounting file (accounting(5), colon-separated; later
#: versions append fields, the positions below stay).
_GE_FIELDS = {"hostname": 1, "job_name": 4, "job_number": 5, "end_time": 10, "failed": 11,
              "exit_status": 12, "ru_wallclock": 13, "ru_maxrss": 16, "cpu": 36,
              "maxvmem": 42}
_GE_MIN_FIELDS = max(_GE_FIELDS.values()) + 1
_MIB = 1024 * 1024


@dataclass(frozen=True)
class JobEndRecord:
    """How a Grid Engine (or DRMAA) job ended, as its accounting record or ``JobInfo`` says."""

    job_number: str
    job_name: str = ""
    hostname: str | None = None
    failed: int = 0
    """Grid Engine's ``failed`` code (0: the job ran and ended by itself or by a signal)."""
    exit_status: int | None = None
    signal: str | None = None
    """The signal that ended the job (``SIGKILL``), if one did."""
    aborted: bool = False
    """DRMAA's ``wasAborted``: the job was deleted (or never ran)."""
    wall_s: float | None = None
    cpu_s: float | None = None
    maxvmem_mb: float | None = None
    maxrss_mb: float | None = None
    end_time: float | None = None
    """When the job ended (seconds since the epoch), if known."""

    @property
    def killed_from_outside(self) -> bool:
        """True when the scheduler says that it ended the job: it enforced a limit, or it
        deleted the job with a signal (a job aborted without a signal may never have run)."""
        return self.failed == FAILED_LIMIT or (
            (self.failed == FAILED_KILLED or self.aborted) and self.signal is not None)

    @property
    def shows_the_systems_hand(self) -> bool:
        """True when the record says more than "the job exited": a failure code, a kill, a
        signal."""
        return bool(self.failed or self.aborted or self.signal)

    def usage(self) -> Usage | None:
        return usage_or_none(Usage(wall_s=self.wall_s, cpu_s=self.cpu_s,
                                   max_rss_mb=self.maxrss_mb, signal=self.signal,
                                   node=self.hostname))

    def describe(self) -> str:
        """The record in a few words, for the job's message."""
        parts = ["aborted"] if self.aborted else []
        if self.failed:
            parts.append(f"failed {self.failed}"
                         + (" (limit enforced)" if self.failed == FAILED_LIMIT else ""))
        if self.exit_status is not None:
            parts.append(f"exit status {self.exit_status}")
        elif self.signal:
            parts.append(f"signal {self.signal}")
        if self.wall_s is not None:
            parts.append(f"wall time {self.wall_s:g} s")
        if self.maxvmem_mb:
            parts.append(f"maxvmem {self.maxvmem_mb:g} MB")
        return ", ".join(parts)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _integer(text: str) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


def _whole(value: float | None) -> int | None:
    return None if value is None else math.ceil(value)


def _megabytes(value: float | None, unit: int) -> float | None:
    return None if value is None else round(value * unit / _MIB, 1)


def parse_accounting_line(line: str) -> JobEndRecord | None:
    """One line of Grid Engine's accounting file -> its record; None for a comment or a line
    that is not a record. ``ru_maxrss`` is in kilobytes, ``maxvmem`` in bytes."""
    if not line or line.startswith("#"):
        return None
    fields = line.rstrip("\n").split(":")
    if len(fields) < _GE_MIN_FIELDS or not fields[_GE_FIELDS["job_number"]].isdigit():
        return None

    def field(name: str) -> str:
        return fields[_GE_FIELDS[name]]

    exit_status = _integer(field("exit_status"))
    end_time = _number(field("end_time"))
    return JobEndRecord(
        job_number=field("job_number"), job_name=field("job_name"),
        hostname=field("hostname") or None, failed=_integer(field("failed")) or 0,
        exit_status=exit_status,
        signal=signal_name(exit_status - 128) if exit_status and exit_status > 128 else None,
        wall_s=_number(field("ru_wallclock")), cpu_s=_number(field("cpu")),
        maxvmem_mb=_megabytes(_number(field("maxvmem")), 1),
        maxrss_mb=_megabytes(_number(field("ru_maxrss")), 1024),
        end_time=end_time or None)


def _lines_backwards(path: Path, max_bytes: int, chunk: int = 65536) -> Iterator[str]:
    """The lines of ``path`` from its last, reading at most ``max_bytes`` from its end."""
    with open(path, "rb") as stream:
        position = stream.seek(0, os.SEEK_END)
        limit = max(position - max_bytes, 0)
        rest = b""
        while position > limit:
            size = min(chunk, position - limit)
            position -= size
            stream.seek(position)
            lines = (stream.read(size) + rest).split(b"\n")
            rest = lines.pop(0)  # maybe the end of a line that starts in the chunk before
            for raw in reversed(lines):
                yield raw.decode("utf-8", "replace")
        if position == 0 and rest:
            yield rest.decode("utf-8", "replace")


def read_accounting_tail(path: Path, wanted: Mapping[str, str], *, since: float | None = None,
                         max_bytes: int = 64 * _MIB) -> dict[str, JobEndRecord]:
    """The records of ``wanted`` jobs (job number -> job name) in Grid Engine's accounting file,
    read from its end backwards: records are appended as jobs end, so the jobs that just ended
    are found in its last lines, whatever the file's size.

    The latest record of a number wins, and only with the wanted name (job numbers wrap
    around). Reading stops when every wanted job is found, at a record of a job that ended
    before ``since`` (seconds since the epoch: no wanted job ended before then), or after
    ``max_bytes``. Raises OSError when the file cannot be read."""
    found: dict[str, JobEndRecord] = {}
    for line in _lines_backwards(path, max_bytes):
        record = parse_accounting_line(line)
        if record is None:
            continue
        number = record.job_number
        if number not in found and wanted.get(number) == record.job_name:
            found[number] = record
            if len(found) == len(wanted):
                break
        if since is not None and record.end_time is not None and record.end_time < since:
            break
    return found


def record_from_job_info(info: Any) -> JobEndRecord:
    """The record of a DRMAA ``JobInfo`` (what ``Session.wait`` returns): its signal, whether it
    was aborted, and the resource usage Grid Engine reports (``ru_wallclock``, ``cpu``,
    ``maxvmem`` in bytes, ``ru_maxrss`` in kilobytes; pbs-drmaa's ``walltime``, ``cpu``,
    ``vmem``, ``mem``)."""
    usage = {str(k): str(v) for k, v in dict(getattr(info, "resourceUsage", {}) or {}).items()}

    def figure(*keys: str) -> float | None:
        for key in keys:
            value = _number(usage.get(key, ""))
            if value is not None:
                return value
        return None

    exit_status = figure("exit_status")
    signalled = bool(getattr(info, "hasSignal", False))
    name = str(getattr(info, "terminatedSignal", "") or "") if signalled else ""
    return JobEndRecord(
        job_number=str(getattr(info, "jobId", "")),
        exit_status=None if exit_status is None else int(exit_status),
        signal=name or None, aborted=bool(getattr(info, "wasAborted", False)),
        wall_s=figure("ru_wallclock", "walltime"), cpu_s=figure("cpu"),
        maxvmem_mb=_megabytes(figure("maxvmem", "vmem"), 1),
        maxrss_mb=_megabytes(figure("ru_maxrss"), 1024),
        end_time=figure("end_time"))


def job_end_evidence(record: JobEndRecord, resources: Resources, *, source: str,
                     memory_enforced: bool = True) -> Evidence:
    """Why a Grid Engine (or DRMAA) job ended, judged from its record and what it requested.

    A job the scheduler killed (:attr:`JobEndRecord.killed_from_outside`: ``failed`` 37, or
    ``failed`` 100 or DRMAA's ``wasAborted`` with a signal) or that a signal ended: walltime
    when its wall time reached the requested walltime, memory when its ``maxvmem`` reached the
    requested (enforced) memory; neither, or both: ``killed_by_system`` if the scheduler killed
    it, else None. A job that ended by itself: None (its exit code says how). ``source`` names
    the evidence in the job's message, which quotes the record only when it shows the system's
    hand (a failure code, a kill, a signal)."""
    reason = None
    if record.killed_from_outside or record.signal:
        over = exceeded_limits(resources, record.wall_s, record.maxvmem_mb,
                               memory_enforced=memory_enforced)
        reason = limit_reason(over, record.killed_from_outside)
    said = f"({source}: {record.describe()})" if record.shows_the_systems_hand else ""
    return Evidence(reason=reason, usage=record.usage(), said=said)


# ---------------------------------------------------------------------- Torque
#: Torque's negative ``exit_status`` codes (``JOB_EXEC_*``, set by the MOM when it could not
#: run the job or ended it): what they mean, and the reason when they say one.
JOB_EXEC_CODES: Mapping[int, tuple[str, Reason | None]] = {
    -1: ("job exec failed, before files, no retry", None),
    -2: ("job exec failed, after files, no retry", None),
    -3: ("job execution failed, do retry", None),
    -4: ("job aborted on MOM initialization", Reason.NODE_FAILURE),
    -5: ("job aborted on MOM initialization, checkpoint, no migrate", Reason.NODE_FAILURE),
    -6: ("job aborted on MOM initialization, checkpoint, ok migrate", Reason.NODE_FAILURE),
    -7: ("job restart failed", None),
    -8: ("exec() of the job's command failed", None),
    -9: ("could not create or open the job's output files", None),
    -10: ("job exceeded a memory limit", Reason.MEMORY_EXCEEDED),
    -11: ("job exceeded a walltime limit", Reason.WALLTIME_EXCEEDED),
    -12: ("job exceeded a CPU time limit", Reason.KILLED_BY_SYSTEM),
    -13: ("could not create the job's cgroups", None),
    -14: ("the job's prologue failed", None),
}

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)([bw]?)$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def torque_size_mb(text: str) -> float | None:
    """Megabytes of a Torque size (``123456kb``, ``2gb``, ``512mw``: words of 8 bytes;
    1024-based); None if unreadable."""
    match = _SIZE.match(text.strip())
    if match is None:
        return None
    number, power, unit = match.groups()
    size = float(number) * 1024 ** _SIZE_POWERS[power.lower()] * (8 if unit.lower() == "w"
                                                                  else 1)
    return round(size / _MIB, 1)


def torque_seconds(text: str) -> float | None:
    """Seconds of a Torque duration (``HH:MM:SS``, ``MM:SS`` or seconds); None if unreadable."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(seconds)


def torque_node(exec_host: str) -> str | None:
    """The first host of ``exec_host`` (``node01/0+node01/1`` -> ``node01``)."""
    first = exec_host.strip().split("+", 1)[0].split("/", 1)[0]
    return first or None


def torque_evidence(attrs: Mapping[str, str]) -> Evidence:
    """Why a completed Torque job ended and what it used, from its ``qstat -f`` attributes.

    ``exit_status``: a negative ``JOB_EXEC_*`` code (:data:`JOB_EXEC_CODES`: -11 walltime,
    -10 memory...); above 256, the MOM killed the job with signal ``exit_status - 256`` (271:
    SIGTERM), for the limit its ``resources_used`` reached in its ``Resource_List`` (else
    ``killed_by_system``); otherwise the job script's own status (None: the exit code says
    it). Without ``exit_status`` (Slurm's Torque wrappers never show it) there is no reason.
    """
    used_wall = torque_seconds(attrs.get("resources_used.walltime", ""))
    used_mem = torque_size_mb(attrs.get("resources_used.mem", ""))
    usage = Usage(wall_s=used_wall, cpu_s=torque_seconds(attrs.get("resources_used.cput", "")),
                  max_rss_mb=used_mem, node=torque_node(attrs.get("exec_host", "")))
    code = _integer((attrs.get("exit_status") or attrs.get("Exit_status") or "").strip())
    reason: str | None = None
    said = ""
    if code is not None and code < 0:
        meaning, known = JOB_EXEC_CODES.get(code, ("unknown Torque exit status", None))
        reason = None if known is None else known.value
        said = f"(Torque exit_status {code}: {meaning})"
    elif code is not None and code > 256:
        name = signal_name(code - 256)
        usage = dataclasses.replace(usage, signal=name)
        requested = Resources(
            walltime_s=_whole(torque_seconds(attrs.get("Resource_List.walltime", ""))),
            memory_mb=_whole(torque_size_mb(attrs.get("Resource_List.mem", ""))))
        reason = limit_reason(exceeded_limits(requested, used_wall, used_mem), True)
        said = f"(Torque exit_status {code}: killed by {name or f'signal {code - 256}'})"
    return Evidence(reason=reason, usage=usage_or_none(usage), said=said)


__all__ = [
    "AWAITED",
    "ENFORCED_MEMORY_RESOURCES",
    "FAILED_KILLED",
    "FAILED_LIMIT",
    "JOB_EXEC_CODES",
    "SACCT_FIELDS",
    "SLURM_REASONS",
    "Evidence",
    "JobEndRecord",
    "SlurmRecord",
    "exceeded_limits",
    "job_end_evidence",
    "limit_reason",
    "parse_accounting_line",
    "parse_sacct_records",
    "read_accounting_tail",
    "record_from_job_info",
    "signal_name",
    "slurm_duration",
    "slurm_nodes",
    "slurm_state",
    "slurm_timestamp",
    "torque_evidence",
    "torque_node",
    "torque_seconds",
    "torque_size_mb",
]
