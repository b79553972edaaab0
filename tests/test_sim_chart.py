"""The ``--plot`` chart of the load generator: what it counts (sim.timeline) and how it draws
it (sim.plot): live jobs as lines, ended jobs per state, throughput, the split by execution
system, latencies on an axis where 0 ms steps sit at 0, and every legend off the data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from sim import timeline as tl
from sim.plot import LINEAR_BELOW_MS, draw, write_plot

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def doc(inserted: float, *, built: float | None = None, submitted: float | None = None,
        running: float | None = None, ended: float | None = None, state: str = "finished",
        system: str | None = "local") -> dict[str, Any]:
    """A job document with its milestones at the given seconds after T0."""
    def at(seconds: float | None) -> datetime | None:
        return None if seconds is None else T0 + timedelta(seconds=seconds)

    found: dict[str, Any] = {"_id": ObjectId(), "state": state,
                             "metadata": {"inserted_at": at(inserted)},
                             "notification": {"state": "none"}}
    for key, value in (("built_at", built), ("submitted_at", submitted),
                       ("started_at", running), ("ended_at", ended)):
        if value is not None:
            found[key] = at(value)
    if system is not None and submitted is not None:
        found["system"] = system
    return found


def test_steps_count_open_intervals_exactly_and_skip_empty_ones() -> None:
    found = tl.steps([(1.0, 3.0), (2.0, None), (2.0, 2.0), (3.0, 4.0)])
    assert found.times == [0.0, 1.0, 2.0, 4.0]  # at 3.0 one left and one came: no change
    assert found.counts == [0, 1, 2, 1]
    assert found.peak == 2
    assert tl.steps([]).counts == [0]


def test_live_stages_follow_each_job_and_skip_what_it_skipped() -> None:
    jobs = tl.job_times([
        doc(0, built=1, submitted=2, running=3, ended=5),
        doc(1, built=2, submitted=2.5, ended=4, state="killed", system="ogs"),  # never ran
        doc(1, ended=1.5, state="error"),  # invalid: never built nor submitted
    ])
    live = tl.live(jobs)
    waiting, queued, running = (live[name] for name in tl.LIVE)
    assert list(zip(waiting.times, waiting.counts, strict=True)) == [
        (0.0, 1), (1.0, 3), (1.5, 2), (2.0, 1), (2.5, 0)]
    assert list(zip(queued.times, queued.counts, strict=True)) == [
        (0.0, 0), (2.0, 1), (2.5, 2), (3.0, 1), (4.0, 0)]
    assert list(zip(running.times, running.counts, strict=True)) == [(0.0, 0), (3.0, 1),
                                                                     (5.0, 0)]
    ended = tl.ended(jobs)
    assert list(ended) == ["finished", "error", "killed"]
    assert ended["killed"].times == [0.0, 4.0] and ended["killed"].counts == [0, 1]
    on_systems = tl.running_per_system(jobs)
    assert list(on_systems) == ["local", "ogs"]
    assert on_systems["ogs"].counts == [0, 1, 0]
    split = tl.states_per_system(jobs)
    assert split[tl.NO_SYSTEM] == {"error": 1}
    assert split["local"] == {"finished": 1} and split["ogs"] == {"killed": 1}


def test_binned_means_weigh_time_and_throughput_uses_round_bins() -> None:
    found = tl.Steps([0.0, 0.5, 0.52, 1.0], [0, 2, 0, 1])
    bins = tl.binned(found, 0.25, 1.5)
    assert bins.lefts == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert bins.means == pytest.approx([0, 0, 2 * 0.02 / 0.25, 0, 1, 1])
    assert tl.bin_width(85) == 2 and tl.bin_width(1.75) == 0.05 and tl.bin_width(0) == 0.01
    assert tl.bin_width(10 * 3600 * 60) == 36000  # past the round widths: whole hours
    jobs = tl.job_times([doc(0, ended=0.5), doc(0, ended=2.5), doc(0.2, ended=2.9)])
    width, series = tl.throughput(jobs)
    assert width == 0.05
    lefts, inserted = series["inserted"]
    assert len(lefts) == 58 and inserted[0] == 40 and inserted[4] == 20
    assert sum(series["ended"][1]) * width == pytest.approx(3)


@pytest.fixture
def matplotlib_agg() -> None:
    pytest.importorskip("matplotlib")  # the test extra installs it; CI never skips this


def burst_docs() -> list[dict[str, Any]]:
    """300 jobs inserted at once on two systems, 0 ms steps included, some killed."""
    docs = []
    for i in range(300):
        start = 1 + i * 0.01
        docs.append(doc(0, built=start - 0.5, submitted=start, running=start,
                        ended=start + 0.05, state="killed" if i % 50 == 0 else "finished",
                        system=("big", "small")[i % 2]))
    return docs


def test_the_chart_draws_lines_legends_off_the_data_and_zero_at_zero(matplotlib_agg,
                                                                      tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = draw(burst_docs(), "burst")
    try:
        fig.canvas.draw()
        axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
        assert set(axes) == {"jobs over time", "throughput over time",
                             "jobs on each execution system",
                             "jobs per execution system, by state",
                             "latency distributions (cumulative)"}
        jobs = axes["jobs over time"]
        assert not jobs.collections  # lines, no stacked areas that hide the live jobs
        labels = [t.get_text() for ax in fig.axes if ax.get_legend()
                  for t in ax.get_legend().get_texts()]
        assert "waiting in the engine (peak 300)" in labels
        assert "ended killed: 6 (right axis)" in labels
        assert any(label.startswith("big (peak") for label in labels)
        assert any(label.startswith("inserted (peak") and "off the scale" in label
                   for label in labels)
        assert "submitted -> running (n=300, all 0 ms)" in labels
        # The burst's insertion rate is off the scale: the ended rate stays readable.
        top = axes["throughput over time"].get_ylim()[1]
        assert top < 1000 < 300 / tl.bin_width(2.0)
        latency = axes["latency distributions (cumulative)"]
        assert latency.get_xscale() == "symlog"
        assert latency.get_xlim()[0] == pytest.approx(-0.15 * LINEAR_BELOW_MS)
        # Every legend lies outside the data area of every axes.
        renderer = fig.canvas.get_renderer()
        legends = [ax.get_legend().get_window_extent(renderer)
                   for ax in fig.axes if ax.get_legend()]
        assert len(legends) == 5
        for box in legends:
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    finally:
        plt.close(fig)
    png = tmp_path / "chart.png"
    write_plot(png, burst_docs(), "burst")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chart_of_no_job_at_all_is_still_drawn(matplotlib_agg, tmp_path: Path) -> None:
    write_plot(tmp_path / "empty.png", [], "empty")
    assert (tmp_path / "empty.png").stat().st_size > 0
