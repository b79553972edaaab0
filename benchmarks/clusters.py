"""The cluster benchmark, run by hand: ``python -m benchmarks.clusters [options]``.

It needs the clusters of ``scripts/provision-clusters.sh`` and starts its own mongod and its own
daemons (``execd run``); it measures, in one run:

(a) **Submission to Grid Engine**: the same N trivial jobs (default 200) submitted by the engine
    and by a plain DRMAA ``runJob`` loop, in the same run, on the same cell:

    * submission: engine = insert of the N documents -> every job has its Grid Engine id
      (``native_id``); direct = the ``runJob`` loop over the N jobs (templates made and deleted
      as the engine's Grid Engine system does, job scripts forged beforehand, outside the
      timing, as the Building actor forges them);
    * end to end: engine = insert -> every job ``finished``; direct = first ``runJob`` -> every
      job ended (``synchronize``).

    The direct loop runs in a process of its own *started* with the DRMAA environment
    (``OgsSystem.process_environment``: libdrmaa can only be loaded by such a process), as the
    engine's actors are. Its DRMAA session is opened before the timing starts; the engine's
    daemon is started and warmed up (a few jobs) before its timing starts; the direct process
    warms up likewise. Rounds alternate the order (direct first, then engine first); the first
    ``--e2e-rounds`` run the jobs to their end, the others stop the jobs once all are submitted
    (cheaper: more samples). A Grid Engine scheduler pass stalls ``runJob`` for about a second,
    and how many passes fall into a submission is luck: single rounds swing by several times,
    so medians over many rounds are compared. The ratio is engine rate / direct rate (target:
    at least 0.8 for submission).

(b) **Status calls per cycle**: with 10 and then 200 active jobs (``sleep`` jobs kept running or
    queued) on each cluster system (Grid Engine, Torque, Slurm), over a window of W seconds:
    how many times the engine asked the system for status (``get_statuses`` calls, one per
    cycle), how many jobs each call covered, and what each call cost the scheduler: scheduler
    commands per call for the command-line systems (counted twice: by the system's own
    counter and by wrapper scripts in the system's ``bin_dir`` that log every invocation of
    the real command), DRMAA ``jobStatus`` requests per call for Grid Engine (DRMAA 1.0 has no
    bulk status call: one request per job within the one pass). The counting is done by a
    drop-in systems plugin, :mod:`benchmarks.plugins.counted_systems` (``counted_ogs``,
    ``counted_torque``, ``counted_slurm``): subclasses of the real systems that append one line
    per ``get_statuses`` call to a file.

Figures are printed (and written as JSON with ``--json``); nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient
from pymongo.collection import Collection

from benchmarks.env import BenchDatabase, BenchEngine, EngineOptions, machine_info
from benchmarks.pool import forge_job_dir
from benchmarks.printing import say
from execution_engine.systems.base import EXIT_CODE_NAME, SCHEDULER_LOG_NAME, SCRIPT_NAME
from execution_engine.systems.ogs import OgsSystem, parse_qstat_xml
from tests.support.cluster_env import DEFAULTS, cluster_environment

ENDED = ("finished", "error", "killed")
ACTIVE = ("submitted", "pending", "running", "hold")
SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sacct")
TORQUE_COMMANDS = ("qsub", "qstat", "qdel", "qhold", "qrls")
WARM_UP = 5
"""Jobs each side runs, untimed, before its measured run (sessions open, caches warm)."""
STATUS_COMMANDS = {"slurm": ("squeue", "sacct"), "torque": ("qstat",)}
PLUGINS = Path(__file__).resolve().parent / "plugins"
"""The drop-in systems plugin folder of the counted systems (:mod:`benchmarks.plugins`)."""

# ---------------------------------------------------------------------- clusters
def ogs_options(env: dict[str, str]) -> dict[str, str]:
    return {"library": env["DRMAA_LIBRARY_PATH"], "sge_root": env["SGE_ROOT"],
            "sge_cell": env["SGE_CELL"]}


def command_output(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                                check=False, env={**os.environ, **(env or {})})
    except (OSError, subprocess.SubprocessError) as exc:
        return f"({argv[0]}: {exc})"
    return (result.stdout + result.stderr).strip()


def cluster_info(env: dict[str, str]) -> dict[str, Any]:
    """What the clusters are: Grid Engine slots and scheduler interval, Slurm's node and
    scheduler parameters."""
    sge = {**os.environ, **env}
    slots = command_output(["qconf", "-sq", "all.q"], sge)
    sched = command_output(["qconf", "-ssconf"], sge)
    conf = command_output(["scontrol", "show", "config"])

    def pick(text: str, *keys: str) -> dict[str, str]:
        """``key value`` (qconf) or ``Key = value`` (scontrol) lines."""
        out = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key in keys:
                out[key] = value.strip().removeprefix("= ").strip()
        return out

    return {
        "grid_engine": {**pick(slots, "slots"), **pick(sched, "schedule_interval",
                                                      "flush_submit_sec", "flush_finish_sec")},
        "slurm": {**pick(conf, "SLURM_VERSION", "SchedulerParameters", "MinJobAge",
                         "SelectTypeParameters"),
                  "nodes": command_output(["sinfo", "-h", "-N", "-o", "%N %c %P %T"])},
        "torque_bin": env["EXECD_TORQUE_BIN"],
    }


def grid_engine_jobs(env: dict[str, str]) -> dict[str, str]:
    """Queued and running Grid Engine jobs: number -> name."""
    text = command_output(["qstat", "-u", "*", "-xml"], env)
    try:
        return parse_qstat_xml(text)
    except Exception:  # an error message instead of XML: the cell does not answer
        return {}


def wait_grid_engine_idle(env: dict[str, str], names: set[str], timeout: float = 300) -> None:
    """Wait until none of ``names`` is queued or running any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not set(grid_engine_jobs(env).values()) & names:
            return
        time.sleep(0.5)
    say(f"  (warning: jobs of the benchmark still in Grid Engine after {timeout:.0f}s)")


# ---------------------------------------------------------------------- (a) the direct loop
def direct_worker(spec_file: str) -> int:
    """The direct DRMAA loop (this module run with ``--direct-worker SPEC``, in a process
    started with the DRMAA environment). Prints one JSON line of results."""
    import drmaa  # loads libdrmaa: only in this process

    spec = json.loads(Path(spec_file).read_text())
    session = drmaa.Session()
    session.initialize()

    def run_job(job_dir: str, name: str) -> str:
        template = session.createJobTemplate()
        template.remoteCommand = "/bin/sh"
        template.args = [str(Path(job_dir) / SCRIPT_NAME)]
        template.workingDirectory = job_dir
        template.jobName = name
        template.outputPath = f":{Path(job_dir) / SCHEDULER_LOG_NAME}"
        template.errorPath = f":{Path(job_dir) / SCHEDULER_LOG_NAME}"
        template.joinFiles = True
        native_id = str(session.runJob(template))
        session.deleteJobTemplate(template)
        return native_id

    try:
        # Warm-up, as the engine's: a few jobs through the open session, ended and reaped.
        warm = [run_job(d, f"{n}-warm") for d, n in zip(spec["warm_dirs"], spec["warm_names"],
                                                        strict=True)]
        session.synchronize(warm, int(spec["timeout"]), True)
        ids = []
        began = time.monotonic()
        for job_dir, name in zip(spec["job_dirs"], spec["names"], strict=True):
            ids.append(run_job(job_dir, name))
        submitted = time.monotonic()
        if not spec["to_the_end"]:  # submission only: stop the jobs, reap them
            session.control(drmaa.Session.JOB_IDS_SESSION_ALL, drmaa.JobControlAction.TERMINATE)
        session.synchronize(ids, int(spec["timeout"]), True)
        ended = time.monotonic()
    finally:
        session.exit()
    codes: Counter[str] = Counter()
    for job_dir in spec["job_dirs"]:
        try:
            codes[(Path(job_dir) / EXIT_CODE_NAME).read_text().strip()] += 1
        except OSError:
            codes["none"] += 1
    print(json.dumps({"submit_s": submitted - began,
                      "ended_s": ended - began if spec["to_the_end"] else None,
                      "exit_codes": dict(codes), "first_id": ids[0] if ids else None}))
    return 0


@dataclass
class Measure:
    """One run of N jobs: submission and end-to-end seconds."""

    who: str
    jobs: int
    submit_s: float
    ended_s: float | None
    """None when the jobs were stopped after their submission (a submission-only round)."""
    outcome: dict[str, int] = field(default_factory=dict)

    @property
    def submit_rate(self) -> float:
        return self.jobs / self.submit_s if self.submit_s > 0 else float("inf")

    @property
    def ended_rate(self) -> float | None:
        if self.ended_s is None:
            return None
        return self.jobs / self.ended_s if self.ended_s > 0 else float("inf")

    def describe(self) -> str:
        text = f"submitted in {self.submit_s:6.2f}s ({self.submit_rate:5.0f} jobs/s)"
        if self.ended_s is not None and self.ended_rate is not None:
            text += f", all ended in {self.ended_s:6.2f}s ({self.ended_rate:4.1f} jobs/s)"
        else:
            text += ", then stopped"
        return f"{text}  {self.outcome}"


def run_direct(root: Path, env: dict[str, str], count: int, *, round_no: int,
               command: Sequence[str], timeout: float, to_the_end: bool) -> Measure:
    """The N jobs through a plain DRMAA loop in a process started with the DRMAA
    environment."""
    base = root / f"direct-{round_no}"
    job_dirs = [base / "bench" / f"d{round_no}-{i:04d}" for i in range(count)]
    for job_dir in job_dirs:
        forge_job_dir(job_dir, command)
    names = [f"bench-direct-{round_no}-{i:04d}" for i in range(count)]
    warm_dirs = [base / "bench" / f"w{round_no}-{i}" for i in range(WARM_UP)]
    for job_dir in warm_dirs:
        forge_job_dir(job_dir, command)
    spec = base / "spec.json"
    spec.write_text(json.dumps({"job_dirs": [str(d) for d in job_dirs], "names": names,
                                "warm_dirs": [str(d) for d in warm_dirs],
                                "warm_names": [f"bench-warm-{round_no}-{i}"
                                               for i in range(WARM_UP)],
                                "timeout": timeout, "to_the_end": to_the_end}))
    process_env = {**os.environ, **env, **OgsSystem.process_environment(ogs_options(env))}
    process_env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "benchmarks.clusters", "--direct-worker",
                             str(spec)], capture_output=True, text=True, env=process_env,
                            timeout=timeout + 120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the direct DRMAA loop failed: {result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    wait_grid_engine_idle(env, set(names))
    return Measure("direct", count, figures["submit_s"], figures["ended_s"],
                   {f"exit {k}": v for k, v in figures["exit_codes"].items()})


def run_engine(jobs: Collection[Any], env: dict[str, str], count: int, *, round_no: int,
               command: Sequence[str], timeout: float, to_the_end: bool = True) -> Measure:
    """The N jobs inserted at once into the running daemon's collection; with ``to_the_end``
    False they are cancelled (through the engine) once all are submitted."""
    docs = [{"state": "to be built", "name": f"bench-{round_no}-{i}", "command": list(command),
             "notify": False} for i in range(count)]
    began = time.monotonic()
    ids = jobs.insert_many(docs).inserted_ids
    submitted_s = 0.0
    ended_s: float | None = None
    deadline = began + timeout
    while time.monotonic() < deadline:
        if not submitted_s and jobs.count_documents(
                {"_id": {"$in": ids}, "native_id": {"$exists": True}}) == count:
            submitted_s = time.monotonic() - began
            if not to_the_end:
                jobs.update_many({"_id": {"$in": ids}}, {"$set": {"cancel_requested": True}})
        if jobs.count_documents({"_id": {"$in": ids}, "state": {"$in": list(ENDED)}}) == count:
            if to_the_end:
                ended_s = time.monotonic() - began
            submitted_s = submitted_s or time.monotonic() - began
            break
        time.sleep(0.02)
    else:
        raise RuntimeError(f"engine: jobs not ended after {timeout:.0f}s: "
                           f"{states(jobs, ids)}")
    wait_grid_engine_idle(env, {f"execd-{i}" for i in ids})
    return Measure("engine", count, submitted_s, ended_s, states(jobs, ids))


def states(jobs: Collection[Any], ids: Sequence[ObjectId]) -> dict[str, int]:
    return dict(Counter(str(d.get("state")) for d in jobs.find({"_id": {"$in": list(ids)}},
                                                                 {"state": 1})))


def ogs_section(env: dict[str, str], name: str = "ogs", cls: str = "ogs", extra: str = "",
                plugins: str = "") -> str:
    opts = ogs_options(env)
    return textwrap.dedent(f"""\
        [[{name}]]
        class = {cls}
        library = {opts["library"]}
        sge_root = {opts["sge_root"]}
        sge_cell = {opts["sge_cell"]}
        {extra}
        """) + plugins + textwrap.dedent(f"""\
        [routes]
        [[default]]
        system = {name}
        """)


def submission_phase(root: Path, db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                     ) -> dict[str, Any]:
    say(f"\n(a) Submission to Grid Engine: {args.jobs} jobs `{' '.join(args.command)}`, "
        f"{args.rounds} rounds ({min(args.e2e_rounds, args.rounds)} to the jobs' end), "
        f"engine vs a direct DRMAA runJob loop")
    options = EngineOptions(log_level="INFO", extra=ogs_section(env))
    engine = BenchEngine(root / "engine-a", db.uri, "bench_a", options)
    config = engine.write_config()
    say("  engine configuration:\n" + quoted(config))
    engine.start()
    client: MongoClient[Any] = MongoClient(db.uri)
    jobs = client["bench_a"]["jobs"]
    runs: list[tuple[Measure, Measure]] = []
    try:
        say(f"  daemon up in {engine.started_s:.1f}s; both sides warm up with {WARM_UP} jobs "
            f"first (untimed)")
        run_engine(jobs, env, WARM_UP, round_no=-1, command=args.command, timeout=args.timeout)
        for round_no in range(args.rounds):
            order = ("direct", "engine") if round_no % 2 == 0 else ("engine", "direct")
            to_the_end = round_no < args.e2e_rounds
            measured: dict[str, Measure] = {}
            for who in order:
                if who == "direct":
                    measured[who] = run_direct(root, env, args.jobs, round_no=round_no,
                                               command=args.command, timeout=args.timeout,
                                               to_the_end=to_the_end)
                else:
                    measured[who] = run_engine(jobs, env, args.jobs, round_no=round_no,
                                               command=args.command, timeout=args.timeout,
                                               to_the_end=to_the_end)
                say(f"  round {round_no + 1} {who:6}: {measured[who].describe()}  load "
                    f"{os.getloadavg()[0]:.2f}")
            runs.append((measured["engine"], measured["direct"]))
    finally:
        engine.stop()
        client.close()
    submit_ratios = [e.submit_rate / d.submit_rate for e, d in runs]
    ended_ratios = [e.ended_rate / d.ended_rate for e, d in runs
                    if e.ended_rate is not None and d.ended_rate is not None]
    submit_median = {who: statistics.median(m.submit_s for pair in runs for m in pair
                                            if m.who == who) for who in ("engine", "direct")}
    ended = {who: [m.ended_s for pair in runs for m in pair
                   if m.who == who and m.ended_s is not None] for who in ("engine", "direct")}
    summary: dict[str, Any] = {
        "submit_median_s": submit_median,
        # Rates: engine / direct = direct seconds / engine seconds.
        "submit_ratio_of_medians": submit_median["direct"] / submit_median["engine"],
        "submit_ratios": submit_ratios,
        "submit_ratio_median": statistics.median(submit_ratios),
    }
    say(f"  submission of {args.jobs} jobs, median over {len(runs)} rounds: engine "
        f"{submit_median['engine']:.2f}s, direct {submit_median['direct']:.2f}s; ratio "
        f"engine/direct (rate) {summary['submit_ratio_of_medians']:.2f} (target >= 0.8)")
    say(f"    per round: {', '.join(f'{r:.2f}' for r in submit_ratios)} (median "
        f"{summary['submit_ratio_median']:.2f})")
    best = {who: min(m.submit_s for pair in runs for m in pair if m.who == who)
            for who in ("engine", "direct")}
    summary.update(submit_best_s=best, submit_ratio_of_bests=best["direct"] / best["engine"])
    say(f"    best rounds (no scheduler pass in the way): engine {best['engine']:.2f}s, direct "
        f"{best['direct']:.2f}s; ratio {summary['submit_ratio_of_bests']:.2f}")
    if ended_ratios:
        ended_median = {who: statistics.median(v) for who, v in ended.items()}
        summary.update(ended_median_s=ended_median,
                       ended_ratio_of_medians=ended_median["direct"] / ended_median["engine"],
                       ended_ratios=ended_ratios)
        say(f"  end to end, median over {len(ended_ratios)} rounds: engine "
            f"{ended_median['engine']:.2f}s, direct {ended_median['direct']:.2f}s; ratio "
            f"engine/direct (rate) {summary['ended_ratio_of_medians']:.2f} (per round: "
            f"{', '.join(f'{r:.2f}' for r in ended_ratios)})")
    return {"runs": [{"engine": asdict(e), "direct": asdict(d)} for e, d in runs], **summary}


# ---------------------------------------------------------------------- (b) status calls
def counting_bin_dir(directory: Path, real: Path, commands: Sequence[str], log: Path) -> Path:
    """Wrapper scripts that log each invocation (one line: the command's name) then run the
    real command."""
    directory.mkdir(parents=True, exist_ok=True)
    for command in commands:
        wrapper = directory / command
        wrapper.write_text(f'#!/bin/sh\necho {command} >> {log}\nexec {real / command} "$@"\n')
        wrapper.chmod(0o755)
    return directory


def system_section(kind: str, env: dict[str, str], root: Path, count_file: Path,
                   command_log: Path) -> str:
    """The counted system's section (plus plugins and route)."""
    plugins = f"[plugins]\nsystems = {PLUGINS}\n"
    if kind == "ogs":
        return ogs_section(env, "bench", "counted_ogs", f"count_file = {count_file}", plugins)
    if kind == "slurm":
        real = Path(shutil.which("squeue") or "/usr/bin/squeue").parent
        bin_dir = counting_bin_dir(root / "bin-slurm", real, SLURM_COMMANDS, command_log)
    else:
        bin_dir = counting_bin_dir(root / "bin-torque", Path(env["EXECD_TORQUE_BIN"]),
                                   TORQUE_COMMANDS, command_log)
    return textwrap.dedent(f"""\
        [[bench]]
        class = counted_{kind}
        bin_dir = {bin_dir}
        count_file = {count_file}
        """) + plugins + "[routes]\n[[default]]\nsystem = bench\n"


@dataclass
class StatusWindow:
    system: str
    active_jobs: int
    window_s: float
    calls: int
    jobs_per_call: list[int]
    commands_per_call: list[int]
    drmaa_requests_per_call: list[int]
    wrapper_commands: dict[str, int]
    call_seconds_median: float

    def line(self) -> str:
        per_call = ("DRMAA jobStatus requests per call "
                    f"{_span(self.drmaa_requests_per_call)}" if self.system == "ogs" else
                    f"scheduler commands per call {_span(self.commands_per_call)} "
                    f"(wrappers counted {sum(self.wrapper_commands.values())}: "
                    f"{self.wrapper_commands or '{}'})")
        return (f"  {self.system:6} {self.active_jobs:4} active jobs: {self.calls} status calls "
                f"in {self.window_s:.0f}s ({self.calls / self.window_s:.2f}/s), jobs per call "
                f"{_span(self.jobs_per_call)}, {per_call}, call median "
                f"{self.call_seconds_median * 1000:.0f} ms")


def quoted(config: str) -> str:
    """A configuration text, indented and marked, blank lines included."""
    return textwrap.indent(config.strip(), "    | ", lambda _: True)


def _span(values: Sequence[int]) -> str:
    if not values:
        return "-"
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def read_lines(path: Path, offset: int) -> tuple[list[str], int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], offset
    return data[offset:].decode().splitlines(), len(data)


def status_phase(root: Path, db: BenchDatabase, env: dict[str, str], args: argparse.Namespace
                 ) -> list[StatusWindow]:
    say(f"\n(b) Status calls per cycle: {', '.join(args.sizes)} active jobs, "
        f"{args.window:.0f}s window, status_interval {args.status_interval:g}s")
    results = []
    for kind in args.systems:
        count_file = root / f"status-{kind}.jsonl"
        command_log = root / f"commands-{kind}.log"
        section = system_section(kind, env, root, count_file, command_log)
        extra = section.replace("[[bench]]\n", f"[[bench]]\nstatus_interval = "
                                               f"{args.status_interval}\n", 1)
        options = EngineOptions(log_level="INFO", extra=extra)
        engine = BenchEngine(root / f"engine-b-{kind}", db.uri, f"bench_b_{kind}", options)
        config = engine.write_config()
        say(f"  {kind} configuration:\n" + quoted(config))
        engine.start()
        client: MongoClient[Any] = MongoClient(db.uri)
        jobs = client[f"bench_b_{kind}"]["jobs"]
        try:
            for size in (int(s) for s in args.sizes):
                results.append(measure_status(kind, jobs, size, count_file=count_file,
                                              command_log=command_log, args=args))
                say(results[-1].line())
        finally:
            engine.stop()
            client.close()
    return results


def measure_status(kind: str, jobs: Collection[Any], size: int, *, count_file: Path,
                   command_log: Path, args: argparse.Namespace) -> StatusWindow:
    docs = [{"state": "to be built", "name": f"held-{i}", "notify": False,
             "command": ["sleep", str(int(args.window * 10 + 600))]} for i in range(size)]
    ids = jobs.insert_many(docs).inserted_ids
    deadline = time.monotonic() + args.timeout
    while set(states(jobs, ids)) - set(ACTIVE):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}: jobs not all active: {states(jobs, ids)}")
        time.sleep(0.2)
    time.sleep(2 * args.status_interval)  # every job seen by the status actor at least once
    _, count_offset = read_lines(count_file, 0)
    _, command_offset = read_lines(command_log, 0)
    began = time.monotonic()
    time.sleep(args.window)
    window = time.monotonic() - began
    calls = [json.loads(line) for line in read_lines(count_file, count_offset)[0]]
    commands = Counter(line.strip() for line in read_lines(command_log, command_offset)[0])
    left = states(jobs, ids)
    if set(left) - set(ACTIVE):
        say(f"  (warning: {kind}: jobs left the active states during the window: {left})")
    # Clean up: cancel through the engine, wait until every job has ended.
    jobs.update_many({"_id": {"$in": ids}}, {"$set": {"cancel_requested": True}})
    deadline = time.monotonic() + args.timeout
    while jobs.count_documents({"_id": {"$in": ids}, "state": {"$in": list(ENDED)}}) < size:
        if time.monotonic() > deadline:
            say(f"  (warning: {kind}: jobs not ended after the cancel: {states(jobs, ids)})")
            break
        time.sleep(0.5)
    status_commands = STATUS_COMMANDS.get(kind, ())
    return StatusWindow(
        system=kind, active_jobs=size, window_s=window, calls=len(calls),
        jobs_per_call=sorted({c["jobs"] for c in calls}),
        commands_per_call=sorted({c["commands"] for c in calls}),
        drmaa_requests_per_call=sorted({c["drmaa_requests"] for c in calls}),
        wrapper_commands={k: v for k, v in commands.items() if k in status_commands},
        call_seconds_median=statistics.median([c["seconds"] for c in calls]) if calls else 0.0,
    )


# ---------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.clusters",
                                description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--jobs", type=int, default=200, help="jobs of the submission phase (a)")
    p.add_argument("--rounds", type=int, default=10,
                   help="rounds of (a); the order engine/direct alternates (default 10)")
    p.add_argument("--e2e-rounds", type=int, default=2,
                   help="how many of the rounds of (a) run the jobs to their end (default 2); "
                        "in the others the jobs are stopped once all are submitted")
    p.add_argument("--command", nargs="+", default=["true"], help="the jobs' command in (a)")
    p.add_argument("--systems", default="ogs,torque,slurm",
                   help="systems of the status phase (b), comma-separated")
    p.add_argument("--sizes", default="10,200", help="active jobs in (b), comma-separated")
    p.add_argument("--window", type=float, default=20.0, help="seconds measured in (b)")
    p.add_argument("--status-interval", type=float, default=2.0,
                   help="status_interval of the systems in (b) (the systems' default is 2)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up")
    p.add_argument("--phases", default="submission,status",
                   help="which phases: submission, status (comma-separated)")
    p.add_argument("--json", type=Path, help="also write the figures into this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--direct-worker", metavar="SPEC", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.direct_worker:
        return direct_worker(args.direct_worker)
    args.systems = [s for s in args.systems.split(",") if s]
    args.sizes = [s for s in args.sizes.split(",") if s]
    phases = set(args.phases.split(","))
    env = cluster_environment(DEFAULTS)
    root = Path(tempfile.mkdtemp(prefix="execd-bench-clusters-"))
    db = BenchDatabase(root / "mongod")
    db.start()
    report: dict[str, Any] = {}
    try:
        report["machine"] = machine_info(db.server.binary)
        report["clusters"] = cluster_info(env)
        say("machine: " + json.dumps(report["machine"]))
        say("clusters: " + json.dumps(report["clusters"]))
        if "submission" in phases:
            report["submission"] = submission_phase(root, db, env, args)
        if "status" in phases:
            report["status"] = [asdict(w) for w in status_phase(root, db, env, args)]
    finally:
        db.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
