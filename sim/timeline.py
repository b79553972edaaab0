"""What the ``--plot`` chart shows, computed from the job documents (no matplotlib here).

Times are seconds since the run's first insertion. A job is *waiting in the engine* from its
insertion until it is submitted (built, routed, handed over), *queued* on its execution system
from its submission until it runs, *running* until it ends, and *ended* (in its final state)
afterwards; a job that skips a milestone (cancelled while queued, invalid) goes straight to the
next one it reached. Counts are exact step functions: one point per event.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sim.report import ENDED, milestones

LIVE = ("waiting in the engine", "queued on the system", "running")
"""The live stages, in the order a job goes through them."""
NO_SYSTEM = "(none)"
"""The system label of a job never handed to an execution system (invalid, cancelled early)."""
NICE_WIDTHS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800,
               3600)
"""Bin widths (s) the throughput chart chooses from."""


@dataclass(frozen=True)
class Steps:
    """A count over time: ``counts[i]`` holds from ``times[i]`` until ``times[i + 1]``."""

    times: list[float]
    counts: list[int]

    @property
    def peak(self) -> int:
        return max(self.counts, default=0)


@dataclass(frozen=True)
class JobTimes:
    """One job's times (s since the origin; None: not reached), final state and system."""

    inserted: float | None
    submitted: float | None
    running: float | None
    ended: float | None
    state: str
    system: str


def job_times(docs: Sequence[Mapping[str, Any]]) -> list[JobTimes]:
    """Each job's times, relative to the earliest insertion (empty when nothing was inserted)."""
    found = [milestones(d) for d in docs]
    firsts = [t["inserted"] for t in found if t["inserted"] is not None]
    if not firsts:
        return []
    origin = min(firsts)

    def rel(at: datetime | None) -> float | None:
        return None if at is None else (at - origin).total_seconds()

    return [JobTimes(rel(t["inserted"]), rel(t["submitted"]), rel(t["running"]), rel(t["ended"]),
                     str(d.get("state")), str(d.get("system") or NO_SYSTEM))
            for d, t in zip(docs, found, strict=True)]


def steps(intervals: Iterable[tuple[float, float | None]]) -> Steps:
    """How many of the ``[start, end)`` intervals (end None: still open) hold at each event."""
    events: Counter[float] = Counter()
    for start, end in intervals:
        if end is not None and end <= start:
            continue  # left the stage the moment it entered it: never counted in it
        events[start] += 1
        if end is not None:
            events[end] -= 1
    times, counts, count = [0.0], [0], 0
    for at in sorted(events):
        if not events[at]:
            continue  # as many left as came: the count does not change
        count += events[at]
        if at == times[-1]:
            counts[-1] = count
        else:
            times.append(at)
            counts.append(count)
    return Steps(times, counts)


def live(jobs: Sequence[JobTimes]) -> dict[str, Steps]:
    """Jobs waiting in the engine, queued on their system, and running, over time."""
    waiting, queued, running = [], [], []
    for job in jobs:
        if job.inserted is None:
            continue
        after_wait = _first(job.submitted, job.running, job.ended)
        waiting.append((job.inserted, after_wait))
        if job.submitted is not None:
            queued.append((job.submitted, _first(job.running, job.ended)))
        if job.running is not None:
            running.append((job.running, job.ended))
    return dict(zip(LIVE, (steps(waiting), steps(queued), steps(running)), strict=True))


def ended(jobs: Sequence[JobTimes]) -> dict[str, Steps]:
    """Jobs ended so far, per final state (the states that occur, in :data:`ENDED` order)."""
    by_state: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    for job in jobs:
        if job.ended is not None and job.state in ENDED:
            by_state[job.state].append((job.ended, None))
    return {s: steps(by_state[s]) for s in ENDED if by_state[s]}


def running_per_system(jobs: Sequence[JobTimes]) -> dict[str, Steps]:
    """Jobs submitted to and not yet ended on each execution system (queued or running)."""
    by_system: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    for job in jobs:
        if job.submitted is not None:
            by_system[job.system].append((job.submitted, job.ended))
    return {name: steps(by_system[name]) for name in sorted(by_system)}


def states_per_system(jobs: Sequence[JobTimes]) -> dict[str, Counter[str]]:
    """Final (or current) states of the jobs of each execution system."""
    found: dict[str, Counter[str]] = defaultdict(Counter)
    for job in jobs:
        found[job.system][job.state] += 1
    return {name: found[name] for name in sorted(found)}


def bin_width(span: float, bins: int = 60) -> float:
    """A round bin width (s) that cuts ``span`` into about ``bins`` bins (at least one)."""
    target = span / bins if span > 0 else NICE_WIDTHS[0]
    return next((w for w in NICE_WIDTHS if w >= target), NICE_WIDTHS[-1] * math.ceil(
        target / NICE_WIDTHS[-1]))


def rate(times: Iterable[float], width: float, span: float) -> tuple[list[float], list[float]]:
    """Events per second in consecutive bins of ``width`` s from 0 to past ``span``: the bins'
    left edges and the rates."""
    count = max(1, math.ceil(span / width)) if span > 0 else 1
    per_bin = [0] * count
    for at in times:
        per_bin[min(count - 1, max(0, int(at // width)))] += 1
    return [i * width for i in range(count)], [n / width for n in per_bin]


def throughput(jobs: Sequence[JobTimes]) -> tuple[float, dict[str, tuple[list[float],
                                                                           list[float]]]]:
    """The bin width, and jobs inserted and ended per second in each bin."""
    span = max((t for j in jobs for t in (j.inserted, j.ended) if t is not None), default=0.0)
    width = bin_width(span)
    return width, {
        "inserted": rate((j.inserted for j in jobs if j.inserted is not None), width, span),
        "ended": rate((j.ended for j in jobs if j.ended is not None), width, span),
    }


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True)
class Binned:
    """A count over time summed up per bin: its time-weighted mean in each bin of ``width`` s
    from 0 (``lefts``: the bins' left edges)."""

    width: float
    lefts: list[float]
    means: list[float]


def binned(found: Steps, width: float, span: float) -> Binned:
    """``found`` per bin of ``width`` s over ``[0, span)`` (the last count holds until
    ``span``). The mean is the average number of jobs in the stage during the bin, so a stage
    that jobs cross in a few milliseconds shows as a small mean, not as a comb of spikes."""
    count = max(1, math.ceil(span / width)) if span > 0 else 1
    area = [0.0] * count
    ends = [*found.times[1:], max(span, found.times[-1])]
    for start, end, value in zip(found.times, ends, found.counts, strict=True):
        first = min(count - 1, int(start // width))
        last = min(count - 1, int(end // width)) if end > start else first
        for index in range(first, last + 1):
            overlap = min(end, (index + 1) * width) - max(start, index * width)
            area[index] += value * max(0.0, overlap)
    return Binned(width, [i * width for i in range(count)], [a / width for a in area])
