"""Printing the benchmark's figures."""

from __future__ import annotations

from pathlib import Path

from benchmarks.phases import ThroughputResult
from benchmarks.profiling import summarize_profile


def say(text: str = "") -> None:
    print(text, flush=True)


def print_run(label: str, index: int, result: ThroughputResult, load: str) -> None:
    say(f"  {label} run {index}: insert {result.insert_s * 1000:.0f} ms, all ended "
        f"{result.ended_s:.2f} s, all notified {result.notified_s:.2f} s: "
        f"{result.rate:.0f} jobs/s  {result.states}  (load {load})")


def print_steps(result: ThroughputResult) -> None:
    say("  step latencies (ms)        p50      p90      p99      max")
    for step, s in result.steps.items():
        if s is not None:
            say(f"    {step:<22}{s['p50']:>7.0f}  {s['p90']:>7.0f}  {s['p99']:>7.0f}  "
                f"{s['max']:>7.0f}")


def print_cpu(result: ThroughputResult) -> None:
    say("  CPU during the run (ms per job): own, jobs reaped")
    own_total = 0.0
    for name, (own, children) in result.cpu_s.items():
        if own or children:
            say(f"    {name:<30}{1000 * own / result.jobs:7.2f}"
                + (f"  {1000 * children / result.jobs:7.2f}" if children else ""))
        if name != "mongod":
            own_total += own
    say(f"    {'engine processes, total':<30}{1000 * own_total / result.jobs:7.2f}")


def print_mongod_ops(result: ThroughputResult) -> None:
    shown = {k: v for k, v in result.mongod_ops.items() if v and k != "op.delete"}
    if not shown:
        return
    say("  mongod per job (benchmark's own operations included): "
        + ", ".join(f"{k} {v / result.jobs:.1f}" for k, v in shown.items()))


def print_rss(rss_start: dict[str, int], rss_end: dict[str, int]) -> None:
    say("  resident memory (MB), first run's start -> last run's end:")
    for name, start in rss_start.items():
        end = rss_end.get(name)
        say(f"    {name:<30}{start / 1024:7.1f} -> "
            + (f"{end / 1024:7.1f}" if end is not None else "   gone"))


def print_profile(name: str, path: Path) -> None:
    summary = summarize_profile(path, top=6)
    if not summary.call_sites:
        return
    say(f"  profile {name}: {summary.samples} main-thread samples ({path.name})")
    for site, share in summary.call_sites:
        say(f"    {share:5.1f}%  {site}")
