"""Running the master as a daemon, and finding, signalling and waiting for a running one.

``execd start`` forks; the child becomes the daemon with python-daemon (detached session, umask,
working directory, stdout/stderr files, pid file with a lock) and tells the waiting parent over a
pipe whether it came up, so that ``start`` exits 0 only when the engine is running, or prints why
not. A pid file left by a killed daemon is detected (its process is gone or is not execd) and
replaced.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

import daemon
from daemon.pidfile import TimeoutPIDLockFile

from execution_engine.config import EngineConfig, EngineSection
from execution_engine.errors import ExecdError
from execution_engine.master import READY_TIMEOUT, Master


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_execd(pid: int) -> bool:
    """True when ``pid`` is a live execd master (not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"execd" in cmdline or b"execution_engine" in cmdline


def running_pid(engine: EngineSection) -> int | None:
    """The pid of the running daemon of this configuration, or None."""
    pid = read_pid(engine.pid_file)
    return pid if pid is not None and is_execd(pid) else None


def clear_stale_pid_file(config: EngineConfig) -> str | None:
    """Remove a pid file whose daemon is gone; returns a note saying so, or None."""
    pid_file = config.engine.pid_file
    if not pid_file.exists() or running_pid(config.engine) is not None:
        return None
    pid = read_pid(pid_file)
    pid_file.unlink(missing_ok=True)
    return f"removed stale pid file {pid_file} (pid {pid} is not running)"


def status_info(config: EngineConfig) -> dict[str, Any]:
    """What the running daemon published about itself (empty if nothing)."""
    try:
        data: dict[str, Any] = json.loads(
            (config.engine.control_dir / "status.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def start_daemon(config: EngineConfig) -> tuple[int, str]:
    """Start the daemon in the background; (exit status, message for the user)."""
    pid = running_pid(config.engine)
    if pid is not None:
        return 1, f"execd is already running (pid {pid}, pid file {config.engine.pid_file})"
    notes = [n for n in [clear_stale_pid_file(config)] if n]
    config.engine.state_dir.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child, checked by the tests' daemons
        os.close(read_end)
        os._exit(_become_daemon(config, write_end))
    os.close(write_end)
    message = _read_ready(read_end, READY_TIMEOUT + 30)
    os.waitpid(child, 0)
    if message.startswith("ok"):
        pid = int(message.split()[1])
        notes.append(f"execd started (pid {pid}); log: {config.engine.log_file}")
        return 0, "\n".join(notes)
    notes.append(f"execd did not start: {message.removeprefix('error: ')}")
    return 1, "\n".join(notes)


def _read_ready(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.5)
            if ready:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                data += chunk
                if data.endswith(b"\n"):
                    break
    text = data.decode(errors="replace").strip()
    return text or "error: the daemon exited before it was ready (see the log file)"


def _become_daemon(config: EngineConfig, ready_fd: int) -> int:
    engine = config.engine
    out = open(engine.state_dir / "execd.out", "a+")  # noqa: SIM115 - handed to the daemon
    pid_lock = TimeoutPIDLockFile(str(engine.pid_file), acquire_timeout=0)

    def ready(message: str) -> None:
        try:
            os.write(ready_fd, message.encode() + b"\n")
            os.close(ready_fd)
        except OSError:
            pass  # the waiting command was interrupted: nothing to tell

    context = daemon.DaemonContext(
        working_directory=str(engine.state_dir),
        umask=engine.umask,
        pidfile=pid_lock,
        stdout=out,
        stderr=out,
        files_preserve=[ready_fd],
        # The master installs its own TERM/HUP handlers; python-daemon's would exit at once.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
    try:
        with context:
            return Master(config, ready=ready).run()
    except Exception as exc:  # e.g. the pid file could not be locked
        ready(f"error: {exc}")
        print(f"execd: {exc}", file=sys.stderr)
        return 1


def run_foreground(config: EngineConfig) -> int:
    """``execd run``: the daemon in the foreground (for systemd and containers)."""
    pid = running_pid(config.engine)
    if pid is not None:
        raise ExecdError(f"execd is already running (pid {pid})")
    note = clear_stale_pid_file(config)
    if note:
        print(note, file=sys.stderr)
    config.engine.state_dir.mkdir(parents=True, exist_ok=True)
    lock = TimeoutPIDLockFile(str(config.engine.pid_file), acquire_timeout=0)
    lock.acquire()
    try:
        return Master(config, echo_logs=True).run()
    finally:
        lock.release()


def signal_daemon(engine: EngineSection, signum: int) -> int:
    """Send ``signum`` to the running daemon; its pid. Raises ExecdError when not running."""
    pid = running_pid(engine)
    if pid is None:
        raise ExecdError(f"execd is not running (no live pid in {engine.pid_file})")
    os.kill(pid, signum)
    return pid


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_execd(pid):
            return True
        time.sleep(0.1)
    return False


def wait_reload(engine: EngineSection, since: float, timeout: float) -> dict[str, Any] | None:
    """The daemon's reload result published after ``since``, or None on timeout."""
    path = engine.control_dir / "reload.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            if data.get("at", 0) >= since:
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None
