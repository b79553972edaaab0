"""``execd-sim``: a simulated load for a running execd, through MongoDB only.

It writes job documents as a portal would (the documented job contract) and reads them back, so it
works against any running daemon, local or remote. Three modes:

* the scenario (default): Mobyle2's load generator, users and projects submitting blast, golden
  and clustalw jobs at random (see :mod:`sim.workload`);
* ``--burst N``: N jobs in one insert;
* ``--trace FILE.swf[.gz]``: a real site's arrival pattern replayed from a Standard Workload
  Format trace, plain or gzip (see :mod:`sim.swf`), its cancelled jobs cancelled at their
  recorded time.

It then waits for every job it submitted to end and be notified (``--timeout``), prints a report
(counts, throughput, latencies of each step) and writes it as JSON (``--report``) and as a chart
(``--plot``). Ctrl-C stops submitting and reports what happened so far.

Exit status: 0 every job ended and was notified; 1 timed out, or a database error; 2 usage or
configuration error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from pymongo.errors import PyMongoError

from execution_engine.cli import mongodb_uri
from execution_engine.config import load_config
from execution_engine.errors import ConfigError, ExecdError
from execution_engine.store import connect
from sim import workload as wl
from sim.plot import PlotUnavailable, require_matplotlib, write_plot
from sim.progress import Progress
from sim.report import build_report, format_report
from sim.runner import Runner
from sim.swf import SwfError, load_trace

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_SCENARIO_JOBS = 500


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="execd-sim", description="Simulated load for a running execd, through MongoDB.")
    p.add_argument("-c", "--config", help="execd configuration file, to find the database "
                   "(default: $EXECD_CONFIG, else /etc/execd/execd.ini)")
    p.add_argument("--uri", help="MongoDB URI (default: the configuration's, else the running "
                   "embedded daemon's)")
    p.add_argument("--database", help="database (default: the configuration's)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--burst", type=int, metavar="N", help="insert N jobs at once")
    mode.add_argument("--trace", metavar="FILE.swf", help="replay a workload trace (SWF, plain "
                      "or gzip: FILE.swf.gz)")
    p.add_argument("--jobs", type=int, help="scenario: jobs to submit (default 500); "
                   "trace: replay only the first JOBS jobs")
    p.add_argument("--users", type=int, default=3, help="scenario/burst users (default 3)")
    p.add_argument("--projects", type=int, default=3, help="scenario/burst projects (default 3)")
    p.add_argument("--seed", type=int, help="random seed (default: a new one each run)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="time compression: 10 runs ten times faster (default 1)")
    p.add_argument("--max-runtime", type=float, default=60.0,
                   help="trace: longest a job sleeps, after --speed (default 60 s)")
    p.add_argument("--trivial", action="store_true",
                   help="scenario/burst: jobs run 'true' instead of the blast/golden/clustalw "
                   "stand-ins")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the jobs "
                   "after the last submission (default 600)")
    p.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw a chart (needs matplotlib)")
    p.add_argument("--data-dir", help="where the scenario's input files go (default: a new "
                   "directory under the temporary directory, removed when every job is done)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter the scenario's jobs run with (default: this one)")
    p.add_argument("--owner-domain", default="", metavar="DOMAIN", help="owners are "
                   "user@DOMAIN (mailed when the engine has an SMTP server) instead of names")
    p.add_argument("--progress-interval", type=float, metavar="S",
                   help="seconds between progress updates (default 0.5 on a terminal, else 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("speed", "timeout"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    for name in ("jobs", "burst", "users", "projects"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("jobs", "burst") else 1):
            p.error(f"--{name}: {value} is out of range")
    if args.max_runtime < 0:
        p.error("--max-runtime must not be negative")


def make_workload(args: argparse.Namespace, data_dir: Path) -> wl.Workload:
    if args.trace:
        parsed = load_trace(args.trace, args.jobs)
        return wl.trace(parsed, speed=args.speed, max_runtime=args.max_runtime,
                        owner_domain=args.owner_domain)
    common: dict[str, Any] = {"users": args.users, "projects": args.projects,
                              "seed": args.seed, "data_dir": data_dir, "python": args.python,
                              "owner_domain": args.owner_domain}
    if not args.trivial:
        wl.prepare_data(data_dir, args.seed)
    if args.burst is not None:
        return wl.burst(jobs=args.burst, trivial=args.trivial, **common)
    jobs = DEFAULT_SCENARIO_JOBS if args.jobs is None else args.jobs
    return wl.scenario(jobs=jobs, speed=args.speed, trivial=args.trivial, **common)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run as ^C does


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        if args.plot:
            require_matplotlib()
        config = load_config(args.config)
        uri = args.uri or mongodb_uri(config)
        database = args.database or config.mongodb.database
    except (ConfigError, PlotUnavailable) as exc:
        print(f"execd-sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExecdError as exc:
        print(f"execd-sim: {exc}", file=sys.stderr)
        return EXIT_FAIL
    run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    own_data = args.data_dir is None
    data_dir = Path(args.data_dir or Path(tempfile.gettempdir()) / "execd-sim" / run_id)
    try:
        workload = make_workload(args, data_dir)
    except (SwfError, OSError) as exc:
        print(f"execd-sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _interrupt)
    client = connect(uri, app_name="execd-sim")
    try:
        code = simulate(args, client[database]["jobs"], run_id, workload, database)
    except PyMongoError as exc:
        print(f"\nexecd-sim: database error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:  # a second ^C, while the report was being made
        return EXIT_INTERRUPTED
    finally:
        client.close()
    if own_data and code == EXIT_OK:
        shutil.rmtree(data_dir, ignore_errors=True)
    elif data_dir.exists():
        print(f"input files kept in {data_dir} (some jobs may still need them)")
    return code


def simulate(args: argparse.Namespace, jobs: Any, run_id: str, workload: wl.Workload,
             database: str) -> int:
    progress = Progress(sys.stdout, workload.total, interval=args.progress_interval,
                        enabled=not args.quiet)
    runner = Runner(jobs, run_id, progress)
    print(f"execd-sim run {run_id} ({workload.mode}, database {database}): "
          f"{workload.description}", flush=True)
    started = time.time()
    interrupted = timed_out = False
    submit_s = 0.0
    try:
        runner.submit(workload)
        submit_s = time.time() - started
        timed_out = not runner.wait(args.timeout)
    except KeyboardInterrupt:
        interrupted = True
        submit_s = submit_s or time.time() - started
    progress.finish()
    docs = runner.documents()
    if interrupted:  # an insert cut short may still have written its jobs: the database knows
        runner.submitted = len(docs)
    report = build_report(docs, run={
        "run_id": run_id, "mode": workload.mode, "description": workload.description,
        "database": database, "planned": workload.total, "submitted": runner.submitted,
        "submit_s": round(submit_s, 3), "max_submit_lag_s": round(runner.max_lag, 3),
        "cancel_requests": runner.cancel_requests,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "interrupted": interrupted, "timed_out": timed_out,
        "settings": {k: v for k, v in vars(args).items() if k not in ("uri",)},
    })
    print(format_report(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"report written to {args.report}")
    if args.plot:
        write_plot(args.plot, docs, f"execd-sim {run_id} ({workload.mode})")
        print(f"chart written to {args.plot}")
    if interrupted:
        return EXIT_INTERRUPTED
    if timed_out:
        print(f"execd-sim: not every job ended and was notified within {args.timeout:g} s",
              file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
