"""A small batch scheduler that runs jobs as background processes of this host, with Slurm's,
Torque's and Grid Engine's commands as its front ends, and no root.

The scheduler keeps its state in one folder (a JSON file per job, a lock, a job counter). Each
submitted job gets a launcher process of its own session that waits while the job is held or
before its start time (``start_delay`` seconds after submission, per scheduler), then runs
``/bin/sh <script>`` in the job's working directory, in a process group of its own, its output
into the job's output file, and records how it ended. Cancelling signals that process group
(TERM, or KILL when forced); suspending stops it (SIGSTOP) and resuming continues it.

Front ends (``FakeScheduler.bin_dir(flavour)`` makes a folder of wrapper scripts calling this
module as a program): ``slurm`` (``sbatch``, ``squeue``, ``scancel``, ``scontrol``, ``sacct``),
``torque`` (``qsub``, ``qstat``, ``qdel``, ``qhold``, ``qrls``) and ``sge`` (``qstat -xml`` and
``qacct``, the commands Grid Engine's system uses besides DRMAA). They take the options the
execution systems pass and print what the real commands print, quirks included (a single
unknown id makes ``squeue`` exit 1; unknown ids make ``qstat`` exit 153).

:meth:`FakeScheduler.show_state` makes the status commands print a native state of the test's
choosing for one job (a state the scheduler does not document, say).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

PENDING, RUNNING, SUSPENDED = "PENDING", "RUNNING", "SUSPENDED"
COMPLETED, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"
ENDED = frozenset({COMPLETED, FAILED, CANCELLED})

TORQUE_SERVER = "fake"


class FakeScheduler:
    """The scheduler whose state lives in ``state_dir``."""

    def __init__(self, state_dir: Path, start_delay: float = 0.0) -> None:
        self.state_dir = state_dir
        (state_dir / "jobs").mkdir(parents=True, exist_ok=True)
        config = state_dir / "config.json"
        if not config.exists():
            config.write_text(json.dumps({"start_delay": start_delay}))

    # ------------------------------------------------------------------ state
    @property
    def start_delay(self) -> float:
        return float(json.loads((self.state_dir / "config.json").read_text())["start_delay"])

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.state_dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _path(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / f"{job_id}.json"

    def load(self, job_id: str) -> dict[str, Any] | None:
        """The job's record, or None when there is no such job."""
        if not job_id.isdigit():
            return None
        try:
            return dict(json.loads(self._path(job_id).read_text()))
        except FileNotFoundError:
            return None

    def save(self, job: dict[str, Any]) -> None:
        path = self._path(job["id"])
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(job))
        temporary.replace(path)

    def jobs(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.state_dir.glob("jobs/*.json"), key=lambda p: int(p.stem)):
            with contextlib.suppress(FileNotFoundError):
                found.append(json.loads(path.read_text()))
        return found

    def update(self, job_id: str, **fields: Any) -> dict[str, Any] | None:
        with self.locked():
            job = self.load(job_id)
            if job is not None:
                job.update(fields)
                self.save(job)
            return job

    def show_state(self, job_id: str, native_state: str) -> None:
        """Make the status commands show ``native_state`` for the job (``job_id`` may be a
        Torque id, ``<number>.<server>``) from now on."""
        self.update(job_id.split(".", 1)[0], shown=native_state)

    # ------------------------------------------------------------------ actions
    def submit(self, *, name: str, script: str, workdir: str, output: str, hold: bool = False,
               begin: float | None = None) -> str:
        """Queue a job and start its launcher; its id."""
        with self.locked():
            counter = self.state_dir / "next_id"
            job_id = str(int(counter.read_text()) if counter.exists() else 1)
            counter.write_text(str(int(job_id) + 1))
            self.save({"id": job_id, "name": name, "script": script, "workdir": workdir,
                       "output": output, "state": PENDING, "held": hold,
                       "begin": begin if begin is not None else time.time() + self.start_delay,
                       "pid": None, "exit": None, "signal": 0, "cancelled": False,
                       "shown": None})
        subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(self.state_dir),
                          "launch", job_id],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        return job_id

    def cancel(self, job_id: str, force: bool = False) -> bool:
        """Cancel the job: False when there is no such job."""
        with self.locked():
            job = self.load(job_id)
            if job is None:
                return False
            if job["state"] in ENDED:
                return True
            job["cancelled"] = True
            if job["state"] == PENDING:
                job["state"] = CANCELLED
            self.save(job)
            pid = job["pid"]
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)  # a suspended job must see its signal
                os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
        return True

    def hold(self, job_id: str, hold: bool) -> str:
        """Hold (or release) a pending job: "" when done, else why not."""
        with self.locked():
            job = self.load(job_id)
            if job is None:
                return "invalid job id"
            if job["state"] != PENDING:
                return "job is no longer pending execution"
            job["held"] = hold
            self.save(job)
        return ""

    def suspend(self, job_id: str, suspend: bool) -> str:
        """Suspend (or resume) a running job: "" when done, else why not."""
        with self.locked():
            job = self.load(job_id)
            if job is None:
                return "invalid job id"
            wanted = RUNNING if suspend else SUSPENDED
            if job["state"] != wanted or not job["pid"]:
                return f"job is not {wanted.lower()}"
            job["state"] = SUSPENDED if suspend else RUNNING
            self.save(job)
            os.killpg(job["pid"], signal.SIGSTOP if suspend else signal.SIGCONT)
        return ""

    # ------------------------------------------------------------------ the launcher
    def launch(self, job_id: str) -> None:
        """Wait for the job's turn, run it, record its end (the launcher process's work)."""
        while True:
            with self.locked():
                job = self.load(job_id)
                if job is None or job["cancelled"]:
                    return
                if not job["held"] and time.time() >= job["begin"]:
                    job["state"] = RUNNING
                    self.save(job)
                    break
            time.sleep(0.05)
        with open(job["output"], "ab") as output:
            process = subprocess.Popen(
                ["/bin/sh", job["script"]], cwd=job["workdir"], stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                     "FAKE_JOB_ID": job_id, "FAKE_JOB_NAME": job["name"]})
        job = self.update(job_id, pid=process.pid) or job
        if job["cancelled"]:  # cancelled while it was being started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        returncode = process.wait()
        with self.locked():
            job = self.load(job_id) or job
            job["exit"] = max(returncode, 0)
            job["signal"] = -returncode if returncode < 0 else 0
            if job["cancelled"]:
                job["state"] = CANCELLED
            else:
                job["state"] = COMPLETED if returncode == 0 else FAILED
            self.save(job)

    # ------------------------------------------------------------------ front ends
    def bin_dir(self, flavour: str) -> Path:
        """A folder of ``flavour``'s commands (slurm, torque, sge) driving this scheduler."""
        folder = self.state_dir / "bin" / flavour
        folder.mkdir(parents=True, exist_ok=True)
        for command in FRONT_ENDS[flavour]:
            wrapper = folder / command
            wrapper.write_text(
                f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} "
                f"{self.state_dir} {flavour} {command} \"$@\"\n")
            wrapper.chmod(0o755)
        return folder


# ---------------------------------------------------------------------- Slurm
def _slurm_state(job: dict[str, Any]) -> tuple[str, str]:
    """squeue's ``%T`` and ``%r`` for a job."""
    reason = "JobHeldUser" if job["held"] and job["state"] == PENDING else "None"
    return job["shown"] or job["state"], reason


def _begin(value: str) -> float:
    """``now+N`` (seconds) as a time; anything else is now."""
    match = re.fullmatch(r"now\+(\d+)", value)
    return time.time() + int(match.group(1)) if match else time.time()


def _value(args: Sequence[str], option: str) -> str | None:
    """The value after ``option`` in ``args``, or None."""
    return args[list(args).index(option) + 1] if option in args else None


def _parse(args: Sequence[str], flags: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Options (``-x value``, ``--x=value``, or one of ``flags`` alone) and the rest."""
    options: dict[str, str] = {}
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if "=" in option:
            key, _, value = option.partition("=")
            options[key] = value
        else:
            options[option] = "" if option in flags or option.startswith("--") else rest.pop(0)
    return options, rest


def sbatch(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    options, rest = _parse(args, ("-H",))
    if options.get("--partition", "batch") not in ("batch", "debug"):
        print(f"sbatch: error: invalid partition specified: {options['--partition']}",
              file=sys.stderr)
        return 1
    begin = _begin(options["--begin"]) if "--begin" in options else None
    print(scheduler.submit(name=options.get("-J", "sbatch"), script=rest[0],
                           workdir=options.get("-D", str(Path.cwd())),
                           output=options.get("-o", "slurm.out"),
                           hold="-H" in options or "--hold" in options, begin=begin))
    return 0


def squeue(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    jobs = scheduler.jobs()
    name = _value(args, "-n")
    if name is not None:
        print("".join(f"{job['id']}\n" for job in jobs if job["name"] == name), end="")
        return 0
    ids = _value(args, "-j")
    if ids is not None:
        wanted = ids.split(",")
        jobs = [job for job in jobs if job["id"] in wanted]
        if not jobs and len(wanted) == 1:  # Slurm's quirk, kept
            print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
            return 1
    for job in jobs:
        state, reason = _slurm_state(job)
        print(f"{job['id']}|{state}|{reason}")
    return 0


def scancel(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    if not scheduler.cancel(args[-1], force="--signal=KILL" in args):
        print(f"scancel: error: Kill job error on job id {args[-1]}: Invalid job id specified",
              file=sys.stderr)
        return 1
    return 0


def scontrol(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    action, job_id = args[0], args[1]
    if action in ("hold", "release"):
        problem = scheduler.hold(job_id, action == "hold")
    else:
        problem = scheduler.suspend(job_id, action == "suspend")
    if problem:
        print(f"{action} {job_id}: {problem}", file=sys.stderr)
        return 1
    return 0


def sacct(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    jobs = scheduler.jobs()
    ids, name = _value(args, "-j"), _value(args, "--name")
    for job in jobs:
        if (ids is not None and job["id"] not in ids.split(",")) or (
                name is not None and job["name"] != name):
            continue
        state = job["state"] + (" by 0" if job["state"] == CANCELLED else "")
        print(f"{job['id']}|{job['name']}|{state}|{job['exit'] or 0}:{job['signal']}")
    return 0


# ---------------------------------------------------------------------- Torque
_TORQUE_STATES = {PENDING: "Q", RUNNING: "R", SUSPENDED: "S"}


def _torque_state(job: dict[str, Any]) -> str:
    if job["shown"]:
        return str(job["shown"])
    if job["state"] == PENDING and job["held"]:
        return "H"
    return _TORQUE_STATES.get(job["state"], "C")


def _sequence(native_id: str) -> str:
    return native_id.split(".", 1)[0]


def qsub(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    options, rest = _parse(args, ("-h",))
    begin = _begin(options["-a"]) if "-a" in options else None
    job_id = scheduler.submit(name=options.get("-N", "STDIN"), script=rest[0],
                              workdir=options.get("-w", str(Path.cwd())),
                              output=options.get("-o", "torque.out"), hold="-h" in options,
                              begin=begin)
    print(f"{job_id}.{TORQUE_SERVER}")
    return 0


def qstat(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    ids = [a for a in args if not a.startswith("-")]
    jobs = scheduler.jobs()
    unknown = []
    if ids:
        known = {job["id"]: job for job in jobs}
        jobs = [known[_sequence(i)] for i in ids if _sequence(i) in known]
        unknown = [i for i in ids if _sequence(i) not in known]
    for job in jobs:
        print(f"Job Id: {job['id']}.{TORQUE_SERVER}\n    Job_Name = {job['name']}\n"
              f"    job_state = {_torque_state(job)}\n")
    for native_id in unknown:
        print(f"qstat: Unknown Job Id {native_id}", file=sys.stderr)
    return 153 if unknown else 0


def qdel(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    job = scheduler.load(_sequence(args[-1]))
    if job is None:
        print(f"qdel: Unknown Job Id {args[-1]}", file=sys.stderr)
        return 153
    if job["state"] in ENDED:
        print(f"qdel: Request invalid for state of job {args[-1]}", file=sys.stderr)
        return 168
    scheduler.cancel(job["id"])
    return 0


def qhold(scheduler: FakeScheduler, args: Sequence[str], hold: bool = True) -> int:
    problem = scheduler.hold(_sequence(args[-1]), hold)
    if problem == "invalid job id":
        print(f"Unknown Job Id {args[-1]}", file=sys.stderr)
        return 153
    return 0  # Torque accepts a hold of a running job (it applies on a requeue)


def qrls(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    return qhold(scheduler, args, hold=False)


# ---------------------------------------------------------------------- Grid Engine
def sge_qstat(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    """``qstat -u '*' -xml``: the pending and running jobs."""
    entries = "".join(
        f"<job_list><JB_job_number>{job['id']}</JB_job_number>"
        f"<JB_name>{job['name']}</JB_name></job_list>"
        for job in scheduler.jobs() if job["state"] not in ENDED)
    print(f"<?xml version='1.0'?><job_info><queue_info>{entries}</queue_info>"
          "<job_info></job_info></job_info>")
    return 0


def qacct(scheduler: FakeScheduler, args: Sequence[str]) -> int:
    """``qacct -j <name>``: the ended jobs of that name."""
    name = args[-1]
    ended = [job for job in scheduler.jobs() if job["name"] == name and job["state"] in ENDED]
    if not ended:
        print(f"error: job name {name} not found", file=sys.stderr)
        return 1
    for job in ended:
        print(f"==============================================================\n"
              f"jobname      {job['name']}\njobnumber    {job['id']}\n"
              f"exit_status  {job['exit'] or 0}")
    return 0


FRONT_ENDS: dict[str, dict[str, Callable[[FakeScheduler, Sequence[str]], int]]] = {
    "slurm": {"sbatch": sbatch, "squeue": squeue, "scancel": scancel, "scontrol": scontrol,
              "sacct": sacct},
    "torque": {"qsub": qsub, "qstat": qstat, "qdel": qdel, "qhold": qhold, "qrls": qrls},
    "sge": {"qstat": sge_qstat, "qacct": qacct},
}


def main(argv: Sequence[str]) -> int:
    state_dir, flavour, *rest = argv
    scheduler = FakeScheduler(Path(state_dir))
    if flavour == "launch":
        scheduler.launch(rest[0])
        return 0
    return FRONT_ENDS[flavour][rest[0]](scheduler, rest[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
