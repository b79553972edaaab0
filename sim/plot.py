"""The ``--plot`` chart: jobs waiting, queued, running and ended over time, throughput over
time, the split by execution system, and the latency distributions (data: :mod:`sim.timeline`).

matplotlib is optional (``pip install 'execd[sim]'``); it is imported only when a chart is asked
for, and :func:`require_matplotlib` says how to get it before any job is submitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sim import timeline as tl
from sim.report import MILESTONES, latencies, milestones

STAGES = {
    "inserted": "to build",
    "built": "to submit",
    "submitted": "submitted",
    "running": "running",
    "ended": "ended, notifying",
    "notified": "done",
}
SHOWN_STEPS = ("inserted->built", "built->submitted", "submitted->running", "running->ended",
               "ended->notified", "inserted->notified")

LIVE_COLORS = {"waiting in the engine": "tab:orange", "queued on the system": "tab:purple",
               "running": "tab:blue"}
STATE_COLORS = {"finished": "tab:green", "error": "tab:red", "killed": "tab:gray"}
OFF_SCALE = 3.0
"""Throughput: an insertion peak this many times the ended peak is drawn off the scale."""
LIVE_BINS = 80
"""About how many bins the live jobs' curves have (short stays would draw a comb of spikes)."""
LINEAR_BELOW_MS = 1.0
"""The latency axis is linear from 0 to this many ms and logarithmic above it (symlog): steps
of 0 ms sit at 0 instead of stretching a log axis down to an arbitrary floor."""


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
    """Draw the run's chart (:func:`draw`) into ``path`` (PNG). Raises PlotUnavailable without
    matplotlib."""
    require_matplotlib()
    import matplotlib.pyplot as plt

    fig = draw(docs, title)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw(docs: Sequence[Mapping[str, Any]], title: str) -> Any:
    """The run's chart as a matplotlib Figure (to be closed by the caller): live and ended jobs
    over time, throughput over time, the split by execution system, and the latency
    distributions. Every legend is outside its axes. Raises PlotUnavailable without
    matplotlib."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = tl.job_times(docs)
    fig = plt.figure(figsize=(13, 17), layout="constrained")
    grid = fig.add_gridspec(4, 2, height_ratios=(1.2, 0.9, 1, 1.1), width_ratios=(1.4, 1))
    jobs_ax = fig.add_subplot(grid[0, :])
    rate_ax = fig.add_subplot(grid[1, :], sharex=jobs_ax)
    system_ax = fig.add_subplot(grid[2, 0], sharex=jobs_ax)
    split_ax = fig.add_subplot(grid[2, 1])
    latency_ax = fig.add_subplot(grid[3, :])
    _jobs_over_time(jobs_ax, jobs)
    _throughput(rate_ax, jobs)
    _per_system(system_ax, split_ax, jobs)
    _latencies(latency_ax, docs)
    fig.suptitle(f"{title}: {len(docs)} jobs")
    return fig


def _outside(ax: Any, handles: Sequence[Any] | None = None, *, right: float = 1.01) -> None:
    """The legend to the right of the axes (``right``: in axes widths, past a right-hand axis'
    labels when there is one), off the data."""
    kwargs: dict[str, Any] = {"loc": "upper left", "bbox_to_anchor": (right, 1.0),
                              "borderaxespad": 0.0, "fontsize": "small"}
    if handles is not None:
        kwargs["handles"] = handles
    if handles or ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _below(ax: Any) -> None:
    """The legend under the axes (a narrow panel has no room on its right), off the data."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), borderaxespad=0.0,
                  fontsize="small", ncol=min(3, len(handles)))


def _jobs_over_time(ax: Any, jobs: Sequence[tl.JobTimes]) -> None:
    """Live jobs per stage (left axis) and ended jobs per final state (right axis), as lines."""
    span = _span(jobs)
    width = tl.bin_width(span, LIVE_BINS)
    handles = []
    for stage, found in tl.live(jobs).items():
        handles.append(_mean(ax, tl.binned(found, width, span), LIVE_COLORS[stage],
                                     f"{stage} (peak {found.peak})"))
    ax.set_ylabel(f"jobs waiting, queued, running\n(mean over {width:g} s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    done = ax.twinx()
    for state, found in tl.ended(jobs).items():
        (line,) = done.step(found.times, found.counts, where="post", linestyle="--",
                            color=STATE_COLORS.get(state, "black"),
                            label=f"ended {state}: {found.counts[-1]} (right axis)")
        handles.append(line)
    done.set_ylabel("jobs ended (cumulative)")
    done.set_ylim(bottom=0)
    ax.set_title("jobs over time")
    ax.set_xlabel("seconds since the first insertion")
    _outside(done, handles, right=1.08)


def _per_s(rate: float) -> str:
    return f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s"


def _span(jobs: Sequence[tl.JobTimes]) -> float:
    """Seconds from the first insertion to the last event."""
    return max((t for j in jobs for t in (j.inserted, j.submitted, j.running, j.ended)
                if t is not None), default=0.0)


def _mean(ax: Any, found: tl.Binned, color: str, label: str) -> Any:
    """A count's mean per bin as a line (its peak goes in the label: bands of the per-bin
    maxima of several stages overlap into an unreadable block); the line."""
    edges = [*found.lefts, found.lefts[-1] + found.width]
    (line,) = ax.step(edges, [*found.means, found.means[-1]], where="post", color=color,
                      label=label)
    return line


def _throughput(ax: Any, jobs: Sequence[tl.JobTimes]) -> None:
    """Jobs inserted and ended per second. A burst inserts its jobs in one bin, at a rate that
    would flatten the ended curve: an insertion peak over OFF_SCALE times the ended peak is
    left off the scale (its value is in the legend)."""
    width, series = tl.throughput(jobs)
    colors = {"inserted": "tab:orange", "ended": "tab:green"}
    peaks = {name: max(rates, default=0.0) for name, (_, rates) in series.items()}
    top = max(peaks["ended"], peaks["inserted"]) or 1.0
    clipped = peaks["inserted"] > OFF_SCALE * peaks["ended"] > 0
    if clipped:
        top = peaks["ended"]
    for name, (lefts, rates) in series.items():
        if not rates:
            continue
        off = name == "inserted" and clipped
        # One more point so that the last bin is drawn as wide as the others.
        ax.step([*lefts, lefts[-1] + width], [*rates, rates[-1]], where="post",
                color=colors[name], linestyle="--" if name == "inserted" else "-",
                label=f"{name} (peak {_per_s(peaks[name])}{', off the scale' if off else ''})")
        if off:
            at = lefts[rates.index(peaks[name])]
            ax.annotate(f"\u2191 {name} {_per_s(peaks[name])}", (at + width, top * 1.15),
                        xytext=(4, -12), textcoords="offset points", color=colors[name],
                        fontsize="small")
    ax.set_ylabel(f"jobs per second\n(bins of {width:g} s)")
    ax.set_ylim(0, top * 1.15)
    ax.set_xlabel("seconds since the first insertion")
    ax.set_title("throughput over time")
    ax.grid(True, alpha=0.3)
    _outside(ax)


def _per_system(timeline: Any, bars: Any, jobs: Sequence[tl.JobTimes]) -> None:
    """Jobs on each execution system over time, and each system's jobs by final state."""
    span = _span(jobs)
    width = tl.bin_width(span, LIVE_BINS)
    for index, (name, found) in enumerate(tl.running_per_system(jobs).items()):
        _mean(timeline, tl.binned(found, width, span), f"C{index}",
                      f"{name} (peak {found.peak})")
    timeline.set_ylabel(f"jobs queued or running\n(mean over {width:g} s)")
    timeline.set_ylim(bottom=0)
    timeline.set_xlabel("seconds since the first insertion")
    timeline.set_title("jobs on each execution system")
    timeline.grid(True, alpha=0.3)
    _below(timeline)
    split = tl.states_per_system(jobs)
    names = list(split)
    states = [s for s in (*STATE_COLORS, *sorted({s for c in split.values() for s in c}))
              if any(c[s] for c in split.values())]
    lefts = [0] * len(names)
    for state in dict.fromkeys(states):
        widths = [split[name][state] for name in names]
        bars.barh(names, widths, left=lefts, height=0.6,
                  color=STATE_COLORS.get(state, "tab:olive"), label=state)
        lefts = [a + b for a, b in zip(lefts, widths, strict=True)]
    for index, total in enumerate(lefts):
        bars.annotate(f" {total}", (total, index), va="center", fontsize="small")
    bars.set_xlabel("jobs")
    bars.set_xlim(0, max(lefts, default=1) * 1.15 or 1)
    bars.invert_yaxis()
    bars.set_title("jobs per execution system, by state")
    _below(bars)


def _latencies(ax: Any, docs: Sequence[Mapping[str, Any]]) -> None:
    for step, values in latencies(docs).items():
        if step not in SHOWN_STEPS or not values:
            continue
        ordered = sorted(max(v, 0.0) for v in values)
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        median = ordered[(len(ordered) - 1) // 2]
        # Curves of steps that always take 0 ms coincide on the vertical at 0: say so.
        spread = "all 0 ms" if ordered[-1] == 0 else f"p50 {median:g} ms"
        ax.step([0.0, *ordered], [0.0, *ys], where="post",
                label=f"{step.replace('->', ' -> ')} (n={len(ordered)}, {spread})")
    ax.set_xscale("symlog", linthresh=LINEAR_BELOW_MS, linscale=0.5)
    # A little room left of 0: the jump of the 0 ms steps is drawn clear of the axis' spine.
    ax.set_xlim(left=-0.15 * LINEAR_BELOW_MS)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"latency (ms; linear below {LINEAR_BELOW_MS:g} ms, logarithmic above)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("latency distributions (cumulative)")
    ax.grid(True, which="both", alpha=0.3)
    _outside(ax)
