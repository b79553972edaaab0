"""What the benchmark runs on: its own mongod, its own daemon, and the machine's description.

The benchmark never uses a daemon or a database it did not start: a :class:`BenchDatabase` is an
:class:`~execution_engine.mongod.EmbeddedMongo` on a free port with a temporary data directory,
and a :class:`BenchEngine` is ``execd run`` in a subprocess with a generated configuration.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from execution_engine.mongod import EmbeddedMongo, free_port
from execution_engine.proc import process_tree

READY_TIMEOUT = 120.0


def machine_info(mongod_binary: str) -> dict[str, Any]:
    """Cores, memory and versions, printed with every run."""
    try:
        out = subprocess.run([mongod_binary, "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
        mongod = out.splitlines()[0].strip() if out else "?"
    except (OSError, subprocess.SubprocessError):
        mongod = "?"
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pymongo": pymongo.version,
        "mongod": mongod,
    }


def rss_kb(pid: int) -> int | None:
    """Resident memory of a process in kB, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """CPU time (user + system) of a process, and of its children it has waited for; None when
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick)


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


class BenchDatabase:
    """A mongod of the benchmark's own (single-node replica set, temporary data directory)."""

    def __init__(self, data_dir: Path) -> None:
        self.server = EmbeddedMongo(data_dir, free_port())

    def start(self) -> str:
        return self.server.start()

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process else None

    def stop(self) -> None:
        self.server.stop()


@dataclass
class EngineOptions:
    """The benchmark's knobs of the daemon configuration."""

    slots: int = os.cpu_count() or 1
    building: int = 1
    submit: int = 1
    status: int = 1
    notification: int = 1
    batch_size: int = 200
    poll_interval: float = 1.0
    log_level: str = "INFO"
    extra: str = ""
    """More configuration text (extra systems and routes)."""

    def config_text(self, state_dir: Path, uri: str, database: str) -> str:
        return textwrap.dedent(f"""\
            [engine]
            state_dir = {state_dir}
            log_level = {self.log_level}

            [mongodb]
            uri = {uri}
            database = {database}

            [monitor]
            poll_interval = {self.poll_interval}

            [actors]
            building = {self.building}
            submit = {self.submit}
            status = {self.status}
            notification = {self.notification}
            batch_size = {self.batch_size}

            [systems]
            [[local]]
            class = local
            slots = {self.slots}
            """) + textwrap.dedent(self.extra)


@dataclass
class BenchEngine:
    """``execd run`` with a generated configuration, in a session of its own."""

    root: Path
    uri: str
    database: str
    options: EngineOptions
    process: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    pids: dict[int, str] = field(default_factory=dict)
    code_dir: Path | None = None
    """Run the ``execution_engine`` package found there (a checkout of another revision)
    instead of the installed one."""

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def config_path(self) -> Path:
        return self.root / "execd.ini"

    def write_config(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        text = self.options.config_text(self.state_dir, self.uri, self.database)
        self.config_path.write_text(text)
        return text

    def start(self) -> None:
        """Start the daemon and wait until its Monitor is up (status file written)."""
        self.write_config()
        status = self.state_dir / "run" / "status.json"
        began = time.monotonic()
        with open(self.root / "run.err", "ab") as errors:
            env = dict(os.environ)
            if self.code_dir is not None:
                env["PYTHONPATH"] = str(self.code_dir)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "execution_engine", "-c", str(self.config_path), "run"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                start_new_session=True, env=env, cwd=self.root,
            )
        while not status.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"execd run exited {self.process.returncode}: "
                                   + (self.root / "run.err").read_text()[-2000:])
            if time.monotonic() - began > READY_TIMEOUT:
                raise RuntimeError(f"execd did not start in {READY_TIMEOUT:.0f}s")
            time.sleep(0.05)
        self.started_s = time.monotonic() - began
        self.wait_for_actors()

    def wait_for_actors(self, timeout: float = 60.0) -> None:
        wanted = {"monitor", "building-actor", "submit-actor", "status-actor",
                  "notification-actor"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if wanted <= set(self.processes()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"engine processes not all up after {timeout:.0f}s: "
                           f"{sorted(self.processes())}")

    def processes(self) -> dict[str, list[int]]:
        """Live engine processes by title (``execd: submit-actor`` -> ``submit-actor``)."""
        found: dict[str, list[int]] = {}
        if self.process is None:
            return found
        for pid in process_tree(self.process.pid):
            title = process_title(pid)
            if title.startswith("execd: "):
                name = title.removeprefix("execd: ").strip()
                found.setdefault(name, []).append(pid)
                self.pids[pid] = name
        return found

    def rss(self) -> dict[str, int]:
        """Resident memory (kB) of every engine process, keyed ``title[pid]``."""
        return {f"{name}[{pid}]": kb for name, pids in sorted(self.processes().items())
                for pid in pids if (kb := rss_kb(pid)) is not None}

    def cpu(self) -> dict[str, tuple[float, float]]:
        """CPU seconds (own, waited-for children's) of every engine process, keyed like
        :meth:`rss`. The Local jobs are children of the Submit actor that started them."""
        return {f"{name}[{pid}]": cpu for name, pids in sorted(self.processes().items())
                for pid in pids if (cpu := cpu_seconds(pid)) is not None}

    def pause(self) -> None:
        """Freeze the whole daemon (SIGSTOP to its process group) while another is measured."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 90.0) -> None:
        self.resume()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
