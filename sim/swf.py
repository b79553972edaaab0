"""Reading workload traces in the Standard Workload Format (SWF).

SWF is the format of the Parallel Workloads Archive (https://www.cs.huji.ac.il/labs/parallel/
workload/): one job per line, 18 whitespace-separated numeric fields, ``-1`` where a value is
unknown; lines starting with ``;`` are the header (``; Key: value`` comments). Fields, in order:

 1 job number          7 used memory (KB)          13 group id
 2 submit time (s)     8 requested processors      14 executable number
 3 wait time (s)       9 requested time (s)        15 queue number
 4 run time (s)       10 requested memory (KB)     16 partition number
 5 allocated procs    11 status (1 ok, 0 failed,   17 preceding job
 6 average cpu time      5 cancelled)              18 think time (s)

A trace may be gzip-compressed (``.swf.gz``, as the archive ships them): a file starting with the
gzip magic bytes is read through gzip, whatever its name.

A malformed line raises :class:`SwfError` naming the file and the line, so that a trace can be
fixed (or cut) where it is broken; so does a compressed file that is corrupt or cut short.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

FIELDS = (
    "job number", "submit time", "wait time", "run time", "allocated processors",
    "average cpu time", "used memory", "requested processors", "requested time",
    "requested memory", "status", "user id", "group id", "executable number",
    "queue number", "partition number", "preceding job", "think time",
)
STATUS_FAILED = 0
STATUS_COMPLETED = 1
STATUS_CANCELLED = 5
GZIP_MAGIC = b"\x1f\x8b"


class SwfError(ValueError):
    """A trace that cannot be read; the message names the file and the line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class SwfJob:
    """One job of a trace (the fields the simulator uses; ``-1`` means unknown)."""

    number: int
    submit_time: float
    run_time: float
    allocated_processors: int
    requested_processors: int
    requested_time: float
    status: int
    user_id: int
    group_id: int
    line: int

    @property
    def processors(self) -> int | None:
        """Processors the job asked for (else those it was given); None when unknown."""
        for value in (self.requested_processors, self.allocated_processors):
            if value > 0:
                return value
        return None

    wait_time: float = -1.0

    @property
    def cancelled(self) -> bool:
        """The job was cancelled (status 5)."""
        return self.status == STATUS_CANCELLED

    @property
    def cancelled_after(self) -> float:
        """For a cancelled job, seconds from its submission to its cancellation: its wait time
        plus its run time (the time from its start to the cancellation; 0 when it was cancelled
        before it started), unknown values counted as 0."""
        return max(self.wait_time, 0.0) + max(self.run_time, 0.0)

    @property
    def duration(self) -> float:
        """How long the job ran (else the time it asked for; else 0): what a replay sleeps."""
        for value in (self.run_time, self.requested_time):
            if value >= 0:
                return value
        return 0.0


@dataclass(frozen=True)
class SwfTrace:
    path: str
    header: dict[str, str]
    jobs: list[SwfJob]


def parse_line(text: str, *, path: str = "<trace>", line: int = 0) -> SwfJob | None:
    """The job on one line, None for a blank or comment line; raises SwfError."""
    stripped = text.strip()
    if not stripped or stripped.startswith(";"):
        return None
    parts = stripped.split()
    if len(parts) != len(FIELDS):
        raise SwfError(path, line, f"expected {len(FIELDS)} fields, found {len(parts)}: "
                                   f"{_clip(stripped)!r}")
    values: list[float] = []
    for index, part in enumerate(parts):
        try:
            value = float(part)
        except ValueError:
            raise SwfError(path, line, f"field {index + 1} ({FIELDS[index]}) is not a number: "
                                       f"{_clip(part)!r}") from None
        if not math.isfinite(value):
            raise SwfError(path, line, f"field {index + 1} ({FIELDS[index]}) is not a finite "
                                       f"number: {part!r}")
        values.append(value)
    if values[1] < 0:
        raise SwfError(path, line, f"field 2 (submit time) must not be negative: {parts[1]!r}")
    return SwfJob(
        number=int(values[0]), submit_time=values[1], run_time=values[3],
        allocated_processors=int(values[4]), requested_processors=int(values[7]),
        requested_time=values[8], status=int(values[10]), user_id=int(values[11]),
        group_id=int(values[12]), line=line, wait_time=values[2],
    )


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """The file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def read_lines(path: str | os.PathLike[str]) -> Generator[tuple[int, str], None, None]:
    """The trace's lines with their numbers (from 1), decompressed when the file is gzip; a
    corrupt or truncated gzip file raises SwfError naming the last line read, other read errors
    OSError."""
    name = str(path)
    if not is_gzip(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from enumerate(f, start=1)
        return
    number = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as z:
            for number, text in enumerate(z, start=1):
                yield number, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise SwfError(name, number or None, f"corrupt or truncated gzip data: {exc}") from None


def iter_jobs(path: str | os.PathLike[str]) -> Iterator[SwfJob]:
    """The jobs of a trace file (plain or gzip) in file order; raises SwfError (or OSError)."""
    name = str(path)
    for number, text in read_lines(path):
        job = parse_line(text, path=name, line=number)
        if job is not None:
            yield job


def read_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``; Key: value`` lines at the top of a trace (plain or gzip)."""
    header: dict[str, str] = {}
    lines = read_lines(path)
    try:
        for _, text in lines:
            stripped = text.strip()
            if stripped and not stripped.startswith(";"):
                break
            key, sep, value = stripped.lstrip("; ").partition(":")
            if sep and key and " " not in key.strip():
                header[key.strip()] = value.strip()
    finally:
        lines.close()  # the file is closed now, not when the generator is collected
    return header


def load_trace(path: str | os.PathLike[str], limit: int | None = None) -> SwfTrace:
    """The first ``limit`` jobs of a trace (all when None), in submit-time order."""
    if not Path(path).is_file():
        raise SwfError(str(path), None, "no such trace file")
    jobs: list[SwfJob] = []
    for job in iter_jobs(path):
        jobs.append(job)
        if limit is not None and len(jobs) >= limit:
            break
    if not jobs:
        raise SwfError(str(path), None, "the trace holds no job line")
    jobs.sort(key=lambda j: (j.submit_time, j.line))
    return SwfTrace(str(path), read_header(path), jobs)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
