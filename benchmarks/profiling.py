"""Sampling the engine's processes with py-spy while a measurement runs (``--profile DIR``).

Each engine process gets a ``py-spy record --format raw`` (collapsed stacks: one line per distinct
stack, with its sample count); :func:`summarize_profile` turns one file into the share of samples
per engine function (callees included) and per call site, which is what the benchmark prints.
``--idle`` samples are kept so that a process waiting for work shows as waiting.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ENGINE = "execution_engine/"
SKIPPED = ("master", "log-receiver")
"""Processes that only wait (the master supervises, the log receiver writes the log)."""


class Profiler:
    def __init__(self, out_dir: Path, rate: int = 100) -> None:
        self.out_dir = out_dir
        self.rate = rate
        self.records: list[tuple[str, Path, subprocess.Popen[bytes]]] = []

    @staticmethod
    def available() -> str | None:
        return shutil.which("py-spy")

    def start(self, processes: dict[str, list[int]]) -> None:
        binary = self.available()
        if binary is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pids in processes.items():
            if name in SKIPPED:
                continue
            for pid in pids:
                out = self.out_dir / f"{name}-{pid}.txt"
                process = subprocess.Popen(
                    [binary, "record", "--pid", str(pid), "--rate", str(self.rate),
                     "--format", "raw", "--idle", "--nonblocking", "--output", str(out)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self.records.append((f"{name}[{pid}]", out, process))

    def stop(self) -> dict[str, Path]:
        """Stop sampling; the profile file of each process that wrote one."""
        for _, _, process in self.records:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        found = {}
        for label, out, process in self.records:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if out.exists():
                found[label] = out
        self.records = []
        return found


@dataclass(frozen=True)
class ProfileSummary:
    samples: int
    """Main-thread samples (idle ones included)."""
    functions: list[tuple[str, float]]
    """Engine functions by inclusive share of the samples (%)."""
    call_sites: list[tuple[str, float]]
    """Where the samples are: the innermost engine frames and the frame executing, by share."""


def summarize_profile(path: Path, top: int = 10) -> ProfileSummary:
    """The main thread's profile of one process. Background threads (pymongo's monitors, the
    Local reaper, queue feeders) are left out: their stacks start in ``threading``."""
    functions: Counter[str] = Counter()
    sites: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames or "_bootstrap (threading.py" in frames[0]:
            continue
        samples += count
        engine = [f for f in frames if ENGINE in f]
        for name in {_function(f) for f in engine}:
            functions[name] += count
        where = " > ".join(_site(f) for f in engine[-2:])
        leaf = frames[-1] if frames[-1] not in engine else ""
        sites[f"{where} | {_function(leaf)}" if leaf else where] += count
    if not samples:
        return ProfileSummary(0, [], [])

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, 100 * n / samples) for k, n in counter.most_common(top)]

    return ProfileSummary(samples, share(functions), share(sites))


def _function(frame: str) -> str:
    """``run (execution_engine/systems/local.py:238)`` -> ``run (local.py)``."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    file = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name} ({Path(file).name})"


def _site(frame: str) -> str:
    """``run (execution_engine/systems/local.py:238)`` -> ``run local.py:238``."""
    name, _, where = frame.partition(" (")
    return f"{name} {Path(where.rstrip(')')).name}" if where else frame
