"""The report of a simulated run, from the job documents' own timestamps.

Each job goes through six milestones: *inserted* (``metadata.inserted_at``, written by the
simulator with millisecond precision; else the ObjectId's generation time), *built*
(``built_at``), *submitted* (``submitted_at``), *running* (``started_at``), *ended*
(``ended_at``) and *notified* (``notification.sent_at``, or ``ended_at`` when there was
nothing to notify). Latencies are the time between two
successive milestones (and from insertion to the end), in milliseconds; percentiles are
nearest-rank. A job that skipped a milestone (an invalid job never runs) is left out of the steps
that need it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MILESTONES = ("inserted", "built", "submitted", "running", "ended", "notified")
STEPS = (
    *((MILESTONES[i], MILESTONES[i + 1]) for i in range(len(MILESTONES) - 1)),
    ("inserted", "running"),
    ("inserted", "ended"),
    ("inserted", "notified"),
)
ENDED = ("finished", "error", "killed")
NOTIFIED = ("sent", "failed", "none")
"""Notification states after which nothing more happens to a job."""
PROJECTION = {"state": 1, "metadata.inserted_at": 1, "built_at": 1, "submitted_at": 1,
              "started_at": 1, "ended_at": 1, "notification.state": 1,
              "notification.sent_at": 1, "exit_code": 1, "name": 1, "system": 1,
              "reason": 1, "usage": 1, "attempt": 1}
USAGE = (("wall_s", "wall time (s)"), ("cpu_s", "CPU time (s)"),
         ("max_rss_mb", "max memory (MB)"))
"""The figures of the jobs' ``usage`` the report summarises, with their labels."""


@dataclass(frozen=True)
class Summary:
    """Distribution of one latency, in milliseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    def as_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "p50": self.p50, "p90": self.p90, "p99": self.p99,
                "max": self.max, "mean": self.mean}


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (``p`` in 0..100)."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(values: Iterable[float]) -> Summary | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return Summary(
        n=len(ordered),
        p50=round(percentile(ordered, 50), 1),
        p90=round(percentile(ordered, 90), 1),
        p99=round(percentile(ordered, 99), 1),
        max=round(ordered[-1], 1),
        mean=round(sum(ordered) / len(ordered), 1),
    )


def milestones(doc: Mapping[str, Any]) -> dict[str, datetime | None]:
    """When the job reached each milestone (None: not reached, or not recorded)."""
    meta = doc.get("metadata") or {}
    inserted = meta.get("inserted_at")
    if not isinstance(inserted, datetime) and hasattr(doc.get("_id"), "generation_time"):
        inserted = doc["_id"].generation_time
    notification = doc.get("notification") or {}
    found = {
        "inserted": inserted,
        "built": doc.get("built_at"),
        "submitted": doc.get("submitted_at"),
        "running": doc.get("started_at"),
        "ended": doc.get("ended_at"),
        # Nothing to notify ("none"): the job was done with when it ended.
        "notified": notification.get("sent_at") or (
            doc.get("ended_at") if notification.get("state") == "none" else None),
    }
    return {k: v if isinstance(v, datetime) else None for k, v in found.items()}


def latencies(docs: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Milliseconds per step, ``"inserted->built"`` and so on."""
    found: dict[str, list[float]] = {f"{a}->{b}": [] for a, b in STEPS}
    for doc in docs:
        times = milestones(doc)
        for a, b in STEPS:
            start, end = times[a], times[b]
            if start is not None and end is not None:
                found[f"{a}->{b}"].append((end - start).total_seconds() * 1000)
    return found


def usage_figures(docs: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Each :data:`USAGE` figure of the ended jobs that recorded it."""
    found: dict[str, list[float]] = {key: [] for key, _ in USAGE}
    for doc in docs:
        usage = doc.get("usage")
        if not isinstance(usage, Mapping):
            continue
        for key, values in found.items():
            value = usage.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append(float(value))
    return found


def is_done(doc: Mapping[str, Any]) -> bool:
    """Ended and notified (or nothing to notify): nothing more will happen to the job."""
    return doc.get("state") in ENDED and (doc.get("notification") or {}).get("state") in NOTIFIED


def build_report(docs: Sequence[Mapping[str, Any]], *, run: Mapping[str, Any]) -> dict[str, Any]:
    """The report as a JSON-ready dict; ``run`` holds what the runner knows (id, mode, times,
    how many jobs it submitted, whether it was interrupted or timed out, its settings)."""
    times = [milestones(d) for d in docs]
    inserted = [t["inserted"] for t in times if t["inserted"] is not None]
    ended = [t["ended"] for t in times if t["ended"] is not None]
    notified = [t["notified"] for t in times if t["notified"] is not None]
    first = min(inserted) if inserted else None
    counts = Counter(str(d.get("state")) for d in docs)
    notes = Counter(str((d.get("notification") or {}).get("state", "-")) for d in docs)
    throughput: dict[str, float | None] = {"ended_per_s": None, "notified_per_s": None}
    if first is not None and ended:
        throughput["ended_per_s"] = _rate(len(ended), (max(ended) - first).total_seconds())
    if first is not None and notified:
        throughput["notified_per_s"] = _rate(len(notified),
                                             (max(notified) - first).total_seconds())
    steps = {}
    for step, values in latencies(docs).items():
        summary = summarize(values)
        steps[step] = summary.as_dict() if summary else None
    last = max([*ended, *notified], default=None)
    usage = {}
    for key, values in usage_figures(docs).items():
        summary = summarize(values)
        usage[key] = summary.as_dict() if summary else None
    reasons = Counter(str(d["reason"]) for d in docs if d.get("reason"))
    return {
        **run,
        "jobs": len(docs),
        "counts": dict(sorted(counts.items())),
        "ended": sum(counts[s] for s in ENDED),
        "done": sum(1 for d in docs if is_done(d)),
        "notification": dict(sorted(notes.items())),
        "first_inserted_at": first.isoformat() if first else None,
        "last_event_at": last.isoformat() if last else None,
        "span_s": round((last - first).total_seconds(), 3) if first and last else None,
        "throughput": throughput,
        "latency_ms": steps,
        "reasons": dict(sorted(reasons.items())),
        "resubmitted": sum(1 for d in docs if isinstance(d.get("attempt"), int)
                           and d["attempt"] > 1),
        "usage": usage,
    }


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else math.inf


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = [f"execd-sim report: run {report['run_id']} ({report['mode']})"]
    if report.get("description"):
        lines.append(f"  workload:      {report['description']}")
    status = ("interrupted" if report.get("interrupted") else
              "timed out" if report.get("timed_out") else "complete")
    lines.append(f"  submitted:     {report['submitted']} of {report['planned']} jobs in "
                 f"{report['submit_s']:.1f} s ({status})")
    if report.get("cancel_requests"):
        lines.append(f"  cancelled:     {report['cancel_requests']} jobs by the simulator, "
                     "as recorded in the trace")
    lines.append("  final states:  " + _pairs(report["counts"]))
    if report.get("reasons"):
        lines.append("  reasons:       " + _pairs(report["reasons"]))
    if report.get("resubmitted"):
        lines.append(f"  resubmitted:   {report['resubmitted']} jobs ran more than once")
    lines.append("  notification:  " + _pairs(report["notification"]))
    span = report.get("span_s")
    tp = report["throughput"]
    lines.append(f"  throughput:    {_num(tp['ended_per_s'])} jobs/s ended, "
                 f"{_num(tp['notified_per_s'])} jobs/s notified"
                 + (f" (first insert to last event: {span:.2f} s)" if span is not None else ""))
    lines.append("")
    header = f"  {'latency (ms)':<24}{'n':>7}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}"
    lines.append(header)
    for step, summary in report["latency_ms"].items():
        label = step.replace("->", " -> ")
        if summary is None:
            lines.append(f"  {label:<24}{0:>7}{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
            continue
        lines.append(f"  {label:<24}{summary['n']:>7}" + "".join(
            f"{summary[k]:>10.1f}" for k in ("p50", "p90", "p99", "max")))
    usage = {key: summary for key, summary in (report.get("usage") or {}).items() if summary}
    if usage:
        lines.append("")
        lines.append(f"  {'usage (ended jobs)':<24}{'n':>7}{'p50':>10}{'p90':>10}{'p99':>10}"
                     f"{'max':>10}")
        for key, label in USAGE:
            if key in usage:
                lines.append(f"  {label:<24}{usage[key]['n']:>7}" + "".join(
                    f"{usage[key][k]:>10.1f}" for k in ("p50", "p90", "p99", "max")))
    return "\n".join(lines)


def _pairs(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "(none)"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
