"""The ``--plot`` chart: jobs per stage over time, and latency distributions.

matplotlib is optional (``pip install 'execd[sim]'``); it is imported only when a chart is asked
for, and :func:`require_matplotlib` says how to get it before any job is submitted.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sim.report import MILESTONES, latencies, milestones

STAGES = {
    "inserted": "to build",
    "built": "to submit",
    "submitted": "submitted",
    "running": "running",
    "ended": "ended, notifying",
    "notified": "done",
}
SAMPLES = 400
SHOWN_STEPS = ("inserted->built", "built->submitted", "submitted->running", "running->ended",
               "ended->notified", "inserted->notified")


class PlotUnavailable(RuntimeError):
    pass


def require_matplotlib() -> None:
    """Raise PlotUnavailable, saying how to install it, when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401 - optional: imported only for a chart
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'execd[sim]' "
            f"(or pip install matplotlib) ({exc})") from exc


def stage_intervals(docs: Sequence[Mapping[str, Any]]
                    ) -> dict[str, tuple[list[float], list[float]]]:
    """For each stage, the sorted times (s since the first insertion) jobs entered and left it."""
    entered: dict[str, list[float]] = {s: [] for s in STAGES.values()}
    left: dict[str, list[float]] = {s: [] for s in STAGES.values()}
    all_times = [milestones(d) for d in docs]
    firsts = [t["inserted"] for t in all_times if t["inserted"] is not None]
    if not firsts:
        return {s: ([], []) for s in STAGES.values()}
    origin = min(firsts)
    for doc, found in zip(docs, all_times, strict=True):
        times = dict(found)
        if (doc.get("notification") or {}).get("state") == "none" and times["ended"]:
            times["notified"] = times["ended"]  # nothing to notify: done at the end
        reached = [(m, at) for m in MILESTONES if (at := times[m]) is not None]
        for index, (milestone, at) in enumerate(reached):
            stage = STAGES[milestone]
            entered[stage].append(_seconds(at, origin))
            if index + 1 < len(reached):
                left[stage].append(_seconds(reached[index + 1][1], origin))
    return {s: (sorted(entered[s]), sorted(left[s])) for s in STAGES.values()}


def _seconds(at: datetime, origin: datetime) -> float:
    return (at - origin).total_seconds()


def write_plot(path: str | Path, docs: Sequence[Mapping[str, Any]], title: str) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    intervals = stage_intervals(docs)
    end = max((t for entered, _ in intervals.values() for t in entered), default=0.0)
    xs = [end * i / (SAMPLES - 1) for i in range(SAMPLES)] if end > 0 else [0.0]
    series = [
        [bisect.bisect_right(entered, x) - bisect.bisect_right(left, x) for x in xs]
        for entered, left in intervals.values()
    ]
    fig, (timeline, dist) = plt.subplots(2, 1, figsize=(11, 9))
    timeline.stackplot(xs, series, labels=list(intervals), step="post")
    timeline.set_xlabel("seconds since the first insertion")
    timeline.set_ylabel("jobs")
    timeline.set_title("jobs per stage over time")
    timeline.legend(loc="upper left", fontsize="small")
    for step, values in latencies(docs).items():
        if step not in SHOWN_STEPS or not values:
            continue
        ordered = sorted(max(v, 0.1) for v in values)
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        dist.step(ordered, ys, where="post", label=f"{step.replace('->', ' -> ')} "
                                                   f"(n={len(ordered)})")
    dist.set_xscale("log")
    dist.set_xlabel("latency (ms, log scale)")
    dist.set_ylabel("fraction of jobs")
    dist.set_title("latency distributions (cumulative)")
    dist.grid(True, which="both", alpha=0.3)
    dist.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
