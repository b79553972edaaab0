"""A/B throughput: the engine of another revision (A) against the working tree (B), in one run.

The machines this runs on are shared, and their speed drifts by tens of per cent within minutes:
two benchmark runs made one after the other cannot show a change of a few per cent. Here both
engines run at once, as two daemons on one mongod (the one not measured frozen with SIGSTOP), and
are measured in alternate order in each round, next to the plain pool; the per-round ratio B/A
is what to read.

    python -m benchmarks.ab                   # HEAD against the working tree, 6 rounds
    python -m benchmarks.ab --base main~3 --rounds 10 --jobs 4000

Revision A is checked out with ``git worktree`` into the temporary directory (so this needs the
git checkout the package runs from) and removed at the end.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from benchmarks.engine import Pool, Subject
from benchmarks.env import BenchDatabase, BenchEngine, EngineOptions
from benchmarks.phases import add_command_option, engine_throughput, warm_up
from benchmarks.printing import print_cpu, say
from execution_engine.store import connect

SOURCE = Path(__file__).resolve().parents[1]
"""The checkout this package runs from: the working tree (B)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n")[0])
    p.add_argument("--base", default="HEAD", help="git revision of engine A (default HEAD)")
    p.add_argument("--rounds", type=int, default=6, help="rounds (default 6)")
    p.add_argument("--jobs", type=int, default=2000, help="jobs per run (default 2000)")
    p.add_argument("--slots", type=int, default=EngineOptions().slots,
                   help="Local slots, and the pool's concurrency (default: the cores)")
    p.add_argument("--timeout", type=float, default=600.0, help="per run (default 600)")
    add_command_option(p)
    return p


@contextmanager
def checkout(revision: str, where: Path) -> Iterator[Path]:
    """``revision`` of this checkout in ``where`` (a detached git worktree), removed after."""
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(SOURCE), *args], check=True, capture_output=True,
                       text=True)

    try:
        git("worktree", "add", "--detach", str(where), revision)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"benchmarks.ab: cannot check out {revision!r}: {exc.stderr.strip()}"
                         ) from None
    try:
        yield where
    finally:
        git("worktree", "remove", "--force", str(where))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = EngineOptions(slots=args.slots)
    root = Path(tempfile.mkdtemp(prefix="execd-ab-"))
    db = BenchDatabase(root / "mongod")
    subjects: list[Subject] = []
    try:
        with checkout(args.base, root / "base") as base:
            db.start()
            for label, code_dir in (("A", base), ("B", SOURCE)):
                engine = BenchEngine(root / label, db.uri, f"ab_{label}", options,
                                     code_dir=code_dir)
                subject = Subject(label, engine, connect(db.uri, app_name="execd-bench"))
                subjects.append(subject)
                engine.start()
                warm_up(subject.jobs)
                engine.pause()
            say(f"A = {args.base}, B = the working tree; {args.rounds} rounds of {args.jobs} "
                f"jobs ({shlex.join(args.command)!r}), Local slots {args.slots}")
            pool = Pool(root / "pool", args.jobs, args.slots, args.command)
            for index in range(1, args.rounds + 1):
                for subject in subjects if index % 2 else subjects[::-1]:
                    subject.engine.resume()
                    result = engine_throughput(subject.engine, subject.jobs, args.jobs,
                                               args.timeout, db.pid, command=args.command)
                    subject.engine.pause()
                    subject.runs.append(result)
                    say(f"  round {index} {subject.label}: {result.rate:.0f} jobs/s")
                pool.run(index)
            report(subjects, pool.rates)
    finally:
        for subject in subjects:
            subject.close()
        db.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(subjects: list[Subject], pool_rates: list[float]) -> None:
    a, b = subjects
    per_round = [rb.rate / ra.rate for ra, rb in zip(a.runs, b.runs, strict=True)]
    say(f"\n  A median {a.rate:.0f} jobs/s, B median {b.rate:.0f}, pool median "
        f"{statistics.median(pool_rates):.0f}")
    say(f"  B / A: median {statistics.median(per_round):.2f}; per round "
        + ", ".join(f"{x:.2f}" for x in per_round))
    for subject in subjects:
        ratios = [r.rate / p for r, p in zip(subject.runs, pool_rates, strict=True)]
        say(f"  {subject.label} / pool per round: " + ", ".join(f"{x:.2f}" for x in ratios))
    for subject in subjects:
        say(f"\n  {subject.label}, its median run:")
        print_cpu(sorted(subject.runs, key=lambda r: r.rate)[len(subject.runs) // 2])


if __name__ == "__main__":
    sys.exit(main())
