"""What the simulator submits, and when: the scenario, a burst, or a replayed trace.

A workload is a series of :class:`Wave` s: at ``at`` seconds after the start (already divided by
``--speed``), insert these jobs, and request the cancellation of some of them a given time later
(the cancelled jobs of a trace). The job documents are what a portal writes (the documented job
contract); the runner adds the run tag and the insertion time.

The scenario follows the load generator of Mobyle2's execution engine: three users (Filochard,
Ribouldingue, Croquignol), three projects each owned by one of them at random, and 500 jobs pushed
at random, every 0 to 5 seconds 0 to 3 new jobs, each one of three command lines: ``blast``,
``golden`` and ``clustalw`` (here small stand-ins in ``sim/apps`` that read their inputs from the
simulator's data directory and write their outputs into the job directory).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.swf import STATUS_FAILED, SwfJob, SwfTrace

CANCEL_MARGIN = 1.0
"""Seconds a cancelled trace job's command outlives its cancellation at the least, so that the
job is still there (queued or running) when the cancellation request is written."""

APPS_DIR = Path(__file__).resolve().parent / "apps"
USER_NAMES = ("filochard", "ribouldingue", "croquignol")
PROJECT_NAMES = ("organisateurs-de-voyage", "dans-le-cambouis", "operation-congelation")
SCENARIO_PAUSE = (0.0, 5.0)
"""Seconds between two waves of the scenario (before ``--speed``)."""
SCENARIO_WAVE = (0, 3)
"""Jobs per wave of the scenario."""

QUERY = """>ABCD2_MOUSE RecName: Full=ATP-binding cassette sub-family D member 2
MIHMLNAAAYRVKWTRSGAAKRAACLVAAAYALKTLYPIIGKRLKQPGHRKAKAEAYSPAENREILHCTEIICKKPAPGL
NAAFFKQLLELRKILFPKLVTTETGWLCLHSVALISRTFLSIYVAGLDGKIVKSIVEKKPRTFIIKLIKWLMIAIPATFV
"""
ALIGNMENT = """>1pgb
MTYKLILNGKTLKGEAVDAATAEKVFKQYANDNGVDGEWTYTKTFTVTE
>1txt
MTYKLILNGKTLKGETTTEAVDAATAEKVNDNGVDGEWTYDDATKTFTVTE
>1trt
MTYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE
"""
TRIVIAL = {"true": ["true"]}
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
DATABASE_SIZE = 300


@dataclass(frozen=True)
class Wave:
    """Jobs inserted together ``at`` seconds after the start; ``cancels`` maps the index of a
    job in ``jobs`` to the seconds after its insertion at which ``cancel_requested`` is set."""

    at: float
    jobs: list[dict[str, Any]]
    cancels: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    mode: str
    total: int
    waves: Iterator[Wave]
    description: str


def prepare_data(data_dir: Path, seed: int | None) -> None:
    """Write the scenario's input files: a query, sequences to align and a small database."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "abcd2_mouse.fa").write_text(QUERY)
    (data_dir / "abcd.fasta").write_text(ALIGNMENT)
    rng = random.Random(seed)
    query = "".join(QUERY.splitlines()[1:])
    lines = [">abcd2_rat ATP-binding cassette sub-family D member 2 (rat)\n",
             _wrap(query[:60] + "AK" + query[62:]),
             ">abcd2_mouse ATP-binding cassette sub-family D member 2 (mouse)\n", _wrap(query)]
    for index in range(DATABASE_SIZE):
        length = rng.randint(80, 400)
        seq = "".join(rng.choice(AMINO_ACIDS) for _ in range(length))
        if index % 10 == 0:  # some related sequences, so that blast has hits to rank
            start = rng.randint(0, len(query) - 40)
            seq = seq[:20] + query[start:start + 40] + seq[60:]
        lines += [f">sp{index:05d} synthetic protein {index}\n", _wrap(seq)]
    (data_dir / "uniprot_sprot.fasta").write_text("".join(lines))


def _wrap(seq: str, width: int = 60) -> str:
    return "".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width))


def app_commands(data_dir: Path, python: str = sys.executable) -> dict[str, list[str]]:
    """The scenario's command lines (the programs are standalone scripts of ``sim/apps``)."""
    db = str(data_dir / "uniprot_sprot.fasta")
    run = [python, "-I"]
    return {
        "blast": [*run, str(APPS_DIR / "blast.py"), "-p", "blastp", "-d", db,
                  "-i", str(data_dir / "abcd2_mouse.fa"), "-e", "0.1", "-o", "blast2.txt"],
        "golden": [*run, str(APPS_DIR / "golden.py"), "uniprot_sprot:abcd2_rat",
                   "--dbdir", str(data_dir)],
        "clustalw": [*run, str(APPS_DIR / "clustalw.py"), "-align",
                     f"-infile={data_dir / 'abcd.fasta'}"],
    }


def people(users: int, projects: int, rng: random.Random) -> dict[str, str]:
    """Projects and the user owning each (chosen at random, as in Mobyle2's scenario)."""
    user_names = [USER_NAMES[i] if i < len(USER_NAMES) else f"user{i + 1}" for i in range(users)]
    return {
        (PROJECT_NAMES[i] if i < len(PROJECT_NAMES) else f"project-{i + 1}"): rng.choice(user_names)
        for i in range(projects)
    }


def scenario(*, jobs: int, users: int, projects: int, speed: float, seed: int | None,
             data_dir: Path, python: str = sys.executable, owner_domain: str = "",
             trivial: bool = False) -> Workload:
    """The Mobyle2 scenario; jobs run ``true`` instead of the stand-ins when ``trivial``."""
    rng = random.Random(seed)
    owners = people(users, projects, rng)
    commands = TRIVIAL if trivial else app_commands(data_dir, python)

    def waves() -> Iterator[Wave]:
        at, left = 0.0, jobs
        while left > 0:
            at += rng.uniform(*SCENARIO_PAUSE) / speed
            count = min(left, rng.randint(*SCENARIO_WAVE))
            docs = []
            for _ in range(count):
                project = rng.choice(sorted(owners))
                name = rng.choice(sorted(commands))
                docs.append(_job(commands[name], name, _owner(owners[project], owner_domain),
                                 project))
            left -= count
            if docs:
                yield Wave(at, docs)

    return Workload("scenario", jobs, waves(),
                    f"{jobs} jobs of {', '.join(sorted(commands))} for {users} users in "
                    f"{projects} projects ({', '.join(f'{p}: {u}' for p, u in owners.items())}), "
                    f"every {SCENARIO_PAUSE[0]:g}-{SCENARIO_PAUSE[1]:g} s "
                    f"{SCENARIO_WAVE[0]}-{SCENARIO_WAVE[1]} jobs, speed x{speed:g}")


def burst(*, jobs: int, users: int, projects: int, seed: int | None, data_dir: Path,
          python: str = sys.executable, owner_domain: str = "", trivial: bool = False
          ) -> Workload:
    """``jobs`` jobs in one insert; scenario jobs, or ``true`` when ``trivial``."""
    rng = random.Random(seed)
    owners = people(users, projects, rng)
    commands = TRIVIAL if trivial else app_commands(data_dir, python)
    docs = []
    for _ in range(jobs):
        project = rng.choice(sorted(owners))
        name = rng.choice(sorted(commands))
        docs.append(_job(commands[name], name, _owner(owners[project], owner_domain), project))
    return Workload("burst", jobs, iter([Wave(0.0, docs)]),
                    f"{jobs} {'trivial ' if trivial else ''}jobs inserted at once")


def trace(parsed: SwfTrace, *, speed: float, max_runtime: float, owner_domain: str = ""
          ) -> Workload:
    """A replay of an SWF trace: each job sleeps its run time / speed (at most ``max_runtime``)
    and arrives at its submit time / speed; failed jobs (status 0) exit 1; cancelled jobs
    (status 5) are cancelled at their recorded time (:func:`cancel_delay` after their insertion)
    and end ``killed``."""
    first = parsed.jobs[0].submit_time

    def waves() -> Iterator[Wave]:
        batch: list[dict[str, Any]] = []
        cancels: dict[int, float] = {}
        batch_at = 0.0
        for job in parsed.jobs:
            at = (job.submit_time - first) / speed
            if batch and at > batch_at:
                yield Wave(batch_at, batch, cancels)
                batch, cancels = [], {}
            batch_at = at
            if job.cancelled:
                cancels[len(batch)] = cancel_delay(job, speed=speed, max_runtime=max_runtime)
            batch.append(trace_job(job, speed=speed, max_runtime=max_runtime,
                                   owner_domain=owner_domain))
        if batch:
            yield Wave(batch_at, batch, cancels)

    span = (parsed.jobs[-1].submit_time - first) / speed
    cancelled = sum(1 for job in parsed.jobs if job.cancelled)
    return Workload("trace", len(parsed.jobs), waves(),
                    f"{len(parsed.jobs)} jobs of {parsed.path} over {span:.1f} s "
                    f"(speed x{speed:g}, run times capped at {max_runtime:g} s"
                    + (f", {cancelled} cancelled at their recorded time" if cancelled else "")
                    + ")")


def cancel_delay(job: SwfJob, *, speed: float, max_runtime: float) -> float:
    """Seconds after its insertion at which a cancelled job is cancelled: its recorded time
    from submission to cancellation / speed, at most ``max_runtime``."""
    return min(job.cancelled_after / speed, max_runtime)


def trace_job(job: SwfJob, *, speed: float, max_runtime: float, owner_domain: str = ""
              ) -> dict[str, Any]:
    """The job document replaying one trace job (see :func:`trace`). A cancelled job's command
    sleeps past its cancellation (by ``max_runtime`` and :data:`CANCEL_MARGIN`), so it is still
    queued or running when the cancellation arrives, however late it started."""
    sleep = min(job.duration / speed, max_runtime)
    if job.cancelled:
        sleep = cancel_delay(job, speed=speed, max_runtime=max_runtime) + max_runtime \
            + CANCEL_MARGIN
    command = ["sleep", f"{sleep:.3f}"]
    if job.status == STATUS_FAILED:
        command = ["sh", "-c", f"sleep {sleep:.3f}; exit 1"]
    owner = f"swf-user-{job.user_id}" if job.user_id >= 0 else "swf-user"
    project = f"swf-group-{job.group_id}" if job.group_id >= 0 else "swf"
    doc = _job(command, f"swf-{job.number}", _owner(owner, owner_domain), project)
    if job.processors is not None:
        doc["requirements"] = {"cores": job.processors}
    doc["metadata"] = {"swf": {"job": job.number, "submit_time": job.submit_time,
                               "run_time": job.run_time, "status": job.status}}
    if job.cancelled:
        doc["metadata"]["swf"]["cancel_after_s"] = round(
            cancel_delay(job, speed=speed, max_runtime=max_runtime), 3)
    return doc


def _owner(user: str, domain: str) -> str:
    return f"{user}@{domain}" if domain else user


def _job(command: list[str], name: str, owner: str, project: str) -> dict[str, Any]:
    return {"state": "to be built", "command": list(command), "name": name, "owner": owner,
            "project": project}
