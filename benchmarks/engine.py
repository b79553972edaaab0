"""The engine benchmark, run by hand: ``python -m benchmarks.engine [options]``.

It starts its own mongod and its own daemons and measures, in one run (see docs/benchmark.md):

1. latency on an idle engine: insert -> job process started, job exit -> ``finished``;
2. throughput: N trivial Local jobs inserted at once, insert -> all ended and notified, next to a
   plain subprocess pool running the same forged job scripts with the same concurrency;
3. scale: the same throughput run on a daemon whose collection also holds 200,000 ended and
   20,000 waiting jobs, and the resident memory of every engine process over the runs.

Throughput runs are done in rounds, so that the figures compared see the same machine load: each
round runs the empty-database daemon, the scale daemon, then the pool, while the daemon not being
measured is frozen (SIGSTOP). Medians over ``--repeat`` rounds are reported, with the per-round
ratios. Figures are printed (and written as JSON with ``--json``); nothing here is a pass/fail
test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from benchmarks.env import (
    BenchDatabase,
    BenchEngine,
    EngineOptions,
    machine_info,
)
from benchmarks.phases import (
    TRIVIAL_COMMAND,
    ThroughputResult,
    add_command_option,
    engine_throughput,
    idle_latency,
    preload,
    warm_up,
)
from benchmarks.pool import PoolRun, forge_job_dir, forge_job_dirs, run_pool
from benchmarks.printing import (
    print_cpu,
    print_mongod_ops,
    print_profile,
    print_rss,
    print_run,
    print_steps,
    say,
)
from benchmarks.profiling import Profiler
from execution_engine.store import connect
from sim.report import summarize
from tests.support.local_slots import BUSY_SYSTEM, hold_local_slot

PHASES = ("throughput", "latency", "scale")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine",
                                description="Benchmark execd against a plain subprocess pool.")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"comma-separated, among {', '.join(PHASES)} (default: all)")
    p.add_argument("--jobs", type=int, default=2000, help="throughput jobs (default 2000)")
    add_command_option(p)
    p.add_argument("--latency-jobs", type=int, default=200, help="latency jobs (default 200)")
    p.add_argument("--scale-ended", type=int, default=200_000)
    p.add_argument("--scale-waiting", type=int, default=20_000)
    defaults = EngineOptions()
    p.add_argument("--slots", type=int, default=defaults.slots,
                   help=f"Local slots, and the pool's concurrency (default {defaults.slots})")
    for kind in ("building", "submit", "status", "notification"):
        p.add_argument(f"--{kind}", type=int, default=1, help=f"[actors] {kind} (default 1)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--poll-interval", type=float, default=defaults.poll_interval)
    p.add_argument("--log-level", default=defaults.log_level)
    p.add_argument("--repeat", type=int, default=5,
                   help="throughput rounds; medians are reported (default 5)")
    p.add_argument("--timeout", type=float, default=600.0, help="per measurement (default 600)")
    p.add_argument("--profile", metavar="DIR", help="after the rounds, one more run of each "
                   "daemon sampled with py-spy, and where its processes' time goes")
    p.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


def options_from(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(slots=args.slots, building=args.building, submit=args.submit,
                         status=args.status, notification=args.notification,
                         batch_size=args.batch_size, poll_interval=args.poll_interval,
                         log_level=args.log_level)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------------- latency
def latency_phase(root: Path, db: BenchDatabase, options: EngineOptions,
                  args: argparse.Namespace) -> dict[str, Any]:
    say(f"\n== latency: {args.latency_jobs} single jobs ('date +%s%N') one after another "
        f"on an idle daemon (load {_load()})")
    engine = BenchEngine(root / "latency", db.uri, "bench_latency", options)
    engine.start()
    client = connect(db.uri, app_name="execd-bench")
    try:
        jobs = client["bench_latency"]["jobs"]
        warm_up(jobs, 5)
        time.sleep(2.0)  # idle
        result = idle_latency(jobs, args.latency_jobs, timeout=args.timeout)
    finally:
        client.close()
        engine.stop()
    out: dict[str, Any] = {"states": result.states}
    say(f"  states {result.states}")
    say("  latency (ms)              p50      p90      p99      max   target")
    for label, values, target in (
        ("insert -> started", result.insert_to_started_ms, "p50 <= 25, p99 <= 100"),
        *((f"  {step}", found, "") for step, found in result.steps_ms.items()),
        ("exit -> finished", result.exit_to_finished_ms, "p50 <= 50"),
        ("insert -> notified", result.insert_to_notified_ms, ""),
    ):
        s = summarize(values)
        if s is None:
            continue
        out[label.strip()] = s.as_dict()
        say(f"    {label:<22}{s.p50:>7.1f}  {s.p90:>7.1f}  {s.p99:>7.1f}  {s.max:>7.1f}   "
            f"{target}")
    return out


# ---------------------------------------------------------------------- throughput and scale
@dataclass
class Subject:
    """A daemon whose throughput is measured, and its runs."""

    label: str
    engine: BenchEngine
    client: MongoClient[Any]
    runs: list[ThroughputResult] = field(default_factory=list)
    slot_fd: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs(self) -> Any:
        return self.client[self.engine.database]["jobs"]

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    def close(self) -> None:
        try:
            self.engine.stop()
        finally:
            self.client.close()
            if self.slot_fd is not None:
                os.close(self.slot_fd)


def start_empty(root: Path, db: BenchDatabase, options: EngineOptions) -> Subject:
    engine = BenchEngine(root / "throughput", db.uri, "bench_throughput", options)
    subject = Subject("empty", engine, connect(db.uri, app_name="execd-bench"))
    engine.start()
    warm_up(subject.jobs)
    return subject


def start_scale(root: Path, db: BenchDatabase, options: EngineOptions,
                args: argparse.Namespace) -> Subject:
    """The daemon with a backlog: ended jobs, and waiting jobs routed to ``busy``, a Local
    system of one slot that the benchmark holds (so that they can never run)."""
    engine = BenchEngine(root / "scale", db.uri, "bench_scale", replace(options,
                                                                        extra=BUSY_SYSTEM))
    subject = Subject("scale", engine, connect(db.uri, app_name="execd-bench"))
    waiting_dir = root / "scale" / "waiting-job"
    forge_job_dir(waiting_dir, ["sleep", "1"], project="busy")
    subject.slot_fd = hold_local_slot(engine.state_dir, "busy")
    took = preload(subject.jobs, ended=args.scale_ended, waiting=args.scale_waiting,
                   waiting_dir=waiting_dir)
    count = subject.jobs.estimated_document_count()
    engine.start()
    warm_up(subject.jobs)
    say(f"  scale daemon: {count} jobs preloaded in {took:.1f} s "
        f"({args.scale_ended} ended, {args.scale_waiting} waiting); up in "
        f"{engine.started_s:.1f} s")
    subject.info = {"preload_s": took, "started_s": engine.started_s}
    return subject


class Pool:
    """The plain pool on the same forged scripts.

    Each run gets job directories of its own, forged before the clock starts and never run
    before, as the engine's jobs are: a job run a second time in the same directory would only
    overwrite its output files, and creating a file costs far more than rewriting one on some
    file systems (ext4 without a journal scans recently deleted inodes at every creation).
    """

    def __init__(self, root: Path, jobs: int, slots: int,
                 command: Sequence[str] = TRIVIAL_COMMAND) -> None:
        self.root = root
        self.jobs = jobs
        self.slots = slots
        self.command = list(command)
        self.runs: list[PoolRun] = []

    @property
    def rates(self) -> list[float]:
        return [self.jobs / r.seconds for r in self.runs]

    def run(self, index: int) -> None:
        scripts = forge_job_dirs(self.root / f"run-{index}", self.jobs, self.command)
        run = run_pool(scripts, self.slots)
        self.runs.append(run)
        jobs = self.jobs
        say(f"  pool run {index}: {self.slots} at a time, {run.seconds:.2f} s: "
            f"{jobs / run.seconds:.0f} jobs/s  (CPU per job: pool "
            f"{1000 * run.own_cpu_s / jobs:.2f} ms, jobs {1000 * run.jobs_cpu_s / jobs:.2f} ms)")


def rounds(subjects: list[Subject], pool: Pool, db: BenchDatabase,
           args: argparse.Namespace) -> None:
    for subject in subjects:
        subject.engine.pause()
    for index in range(1, args.repeat + 1):
        for subject in subjects:
            subject.engine.resume()
            result = engine_throughput(subject.engine, subject.jobs, args.jobs, args.timeout,
                                       db.pid, command=args.command)
            subject.engine.pause()
            subject.runs.append(result)
            print_run(subject.label, index, result, _load())
        pool.run(index)
    if args.profile:
        for subject in subjects:
            subject.engine.resume()
            profiler = Profiler(Path(args.profile) / subject.label)
            profiler.start(subject.engine.processes())
            result = engine_throughput(subject.engine, subject.jobs, args.jobs, args.timeout,
                                       db.pid, command=args.command)
            found = profiler.stop()
            subject.engine.pause()
            say(f"  {subject.label}: profiled run (not counted): {result.rate:.0f} jobs/s")
            subject.info["profiles"] = {k: str(v) for k, v in found.items()}


def describe(subject: Subject) -> dict[str, Any]:
    middle = sorted(subject.runs, key=lambda r: r.rate)[len(subject.runs) // 2]
    say(f"\n  {subject.label} daemon: median {subject.rate:.0f} jobs/s over "
        f"{len(subject.runs)} runs; the median run:")
    print_steps(middle)
    print_cpu(middle)
    print_mongod_ops(middle)
    print_rss(subject.runs[0].rss_start, subject.runs[-1].rss_end)
    for name, path in subject.info.get("profiles", {}).items():
        print_profile(name, Path(path))
    return {**subject.info, "rate": subject.rate,
            "runs": [{**asdict(r), "rate": r.rate} for r in subject.runs],
            "rss_kb": [subject.runs[0].rss_start, subject.runs[-1].rss_end]}


def throughput_phases(root: Path, db: BenchDatabase, options: EngineOptions,
                      args: argparse.Namespace, phases: list[str]) -> dict[str, Any]:
    names = [name for name, phase in (("empty daemon", "throughput"),
                                      ("scale daemon", "scale")) if phase in phases]
    say(f"\n== throughput: {args.jobs} trivial jobs ({shlex.join(args.command)!r}) inserted at "
        f"once, Local slots "
        f"{options.slots}; {args.repeat} rounds of: {', '.join([*names, 'plain pool'])}")
    pool = Pool(root / "pool", args.jobs, options.slots, args.command)
    subjects: list[Subject] = []
    try:
        if "throughput" in phases:
            subjects.append(start_empty(root, db, options))
        if "scale" in phases:
            subjects.append(start_scale(root, db, options, args))
        rounds(subjects, pool, db, args)
        out: dict[str, Any] = {"pool": [asdict(r) for r in pool.runs], "pool_rates": pool.rates,
                               "pool_rate": statistics.median(pool.rates)}
        for subject in subjects:
            out[subject.label] = describe(subject)
        if "scale" in phases:
            scale = next(s for s in subjects if s.label == "scale")
            waiting = scale.jobs.count_documents({"project": "busy", "state": "to be submitted"})
            say(f"  scale: waiting jobs still waiting at the end: {waiting} of "
                f"{args.scale_waiting}")
            out["scale"]["waiting_left"] = waiting
    finally:
        for subject in subjects:
            subject.close()
    say(f"\n  plain pool: median {out['pool_rate']:.0f} jobs/s")
    for subject in subjects:
        ratios = [r.rate / p for r, p in zip(subject.runs, pool.rates, strict=True)]
        out[subject.label]["pool_ratio"] = subject.rate / out["pool_rate"]
        say(f"  {subject.label} daemon / pool: {subject.rate / out['pool_rate']:.2f} (medians); "
            f"per round {', '.join(f'{x:.2f}' for x in ratios)}"
            + ("  (target >= 0.5)" if subject.label == "empty" else ""))
    if len(subjects) == 2:
        empty, scale = subjects
        per_round = [s.rate / e.rate for e, s in zip(empty.runs, scale.runs, strict=True)]
        out["scale_ratio"] = scale.rate / empty.rate
        say(f"  scale daemon / empty daemon: {out['scale_ratio']:.2f} (medians); per round "
            f"{', '.join(f'{x:.2f}' for x in per_round)}  (target >= 0.8)")
    return out


# ---------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        print(f"benchmark: unknown phases {sorted(unknown)} (known: {', '.join(PHASES)})",
              file=sys.stderr)
        return 2
    if args.profile and Profiler.available() is None:
        print("benchmark: --profile needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    options = options_from(args)
    root = Path(tempfile.mkdtemp(prefix="execd-bench-"))
    db = BenchDatabase(root / "mongod")
    results: dict[str, Any] = {"options": asdict(options), "args": vars(args)}
    try:
        db.start()
        results["machine"] = machine_info(db.server.binary)
        say("execd benchmark")
        for key, value in results["machine"].items():
            say(f"  {key + ':':<11}{value}")
        say("  config:    " + options.config_text(root / "state", db.uri, "bench_*")
            .strip().replace("\n", "\n             "))
        if "scale" in phases:
            say("  scale:     plus a system 'busy' (Local, slots = 1, slot_wait = 0) and a route "
                "to it for project 'busy'")
        if "latency" in phases:
            results["latency"] = latency_phase(root, db, options, args)
        if {"throughput", "scale"} & set(phases):
            results["throughput"] = throughput_phases(root, db, options, args, phases)
    except KeyboardInterrupt:
        print("\nbenchmark interrupted", file=sys.stderr)
        return 130
    finally:
        db.stop()
        if args.keep:
            say(f"\nfiles kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
