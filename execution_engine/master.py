"""The master process: the root of the daemon's process tree.

It starts, supervises (restarting what dies) and stops, in order: the log receiver, the embedded
mongod (only when no MongoDB URI is configured) and the Monitor (which runs the actors). Signal
handlers only record the signal; the main loop acts on it:

* SIGTERM / SIGINT: warm stop (actors finish their batch); a second one: cold stop (kill now).
* SIGHUP: reload. The new configuration and plugins are checked first; if anything is wrong the
  old configuration stays and the reason is logged and published for ``execd reload``.

What a reload changes live: everything in ``[actors]``, ``[monitor]``, ``[notification]``,
``[plugins]``, ``[systems]`` and ``[routes]``, and ``[engine] log_level``. What needs a restart
(a reload keeps the old value and says so): ``[engine] state_dir, jobs_dir, pid_file, log_file,
umask`` and the whole ``[mongodb]`` section.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from setproctitle import setproctitle

from execution_engine.config import EngineConfig, load_config
from execution_engine.errors import ExecdError
from execution_engine.identity import check_privilege
from execution_engine.logs import LogQueue, log_to_queue, receive_logs
from execution_engine.mongoaccess import check_database_access, redact_uri
from execution_engine.mongod import EmbeddedMongo
from execution_engine.monitor import STOP_TIMEOUT, describe_exit, run_monitor
from execution_engine.plugins import LoaderRole, load_registry
from execution_engine.systems.base import host_name

log = logging.getLogger(__name__)

READY_TIMEOUT = 120.0
RESTART_BACKOFF = 2.0


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data`` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def restart_only_changes(old: EngineConfig, new: EngineConfig) -> list[str]:
    """The changed settings a reload cannot apply (they need a restart)."""
    changed = []
    for key in ("state_dir", "jobs_dir", "pid_file", "log_file", "umask"):
        if getattr(old.engine, key) != getattr(new.engine, key):
            changed.append(f"[engine] {key}")
    if old.mongodb != new.mongodb:
        changed.append("[mongodb]")
    return changed


class Master:
    def __init__(self, config: EngineConfig, *, echo_logs: bool = False,
                 ready: Callable[[str], None] = lambda message: None) -> None:
        self.config = config
        self.echo_logs = echo_logs
        self.ready = ready
        self.mp = multiprocessing.get_context("spawn")
        self.instance = f"{host_name()}/{uuid.uuid4().hex[:12]}"
        self.stop_requests = 0
        self.reload_requested = False
        self.log_queue: LogQueue | None = None
        self.receiver: multiprocessing.process.BaseProcess | None = None
        self.monitor: multiprocessing.process.BaseProcess | None = None
        self.control: multiprocessing.connection.Connection | None = None
        self.mongo: EmbeddedMongo | None = None
        self.mongodb_uri = config.mongodb.uri
        self.started_at = time.time()

    @property
    def status_file(self) -> Path:
        return self.config.engine.control_dir / "status.json"

    @property
    def reload_file(self) -> Path:
        return self.config.engine.control_dir / "reload.json"

    # ------------------------------------------------------------------ life
    def run(self) -> int:
        """Run until stopped; returns the exit status of the daemon."""
        setproctitle("execd: master")
        multiprocessing.current_process().name = "master"
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        os.umask(self.config.engine.umask)
        for directory in (self.config.engine.state_dir, self.config.engine.jobs_dir,
                          self.config.engine.control_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.log_queue = LogQueue(ctx=self.mp)
        self._start_receiver()
        log_to_queue(self.log_queue, self.config.engine.log_level, "master")
        try:
            check_privilege(self.config.identity)
            self._start_database()
            self._start_monitor(wait=True)
        except (ExecdError, OSError) as exc:
            log.critical("cannot start: %s", exc)
            self.ready(f"error: {exc}")
            self._stop_all()
            return 1
        write_json(self.status_file, {
            "pid": os.getpid(), "started_at": self.started_at, "instance": self.instance,
            "mongodb_uri": redact_uri(self.mongodb_uri), "config": self.config.describe_source(),
            "embedded_mongodb": self.mongo is not None,
        })
        log.info("execd started (pid %d, config %s, MongoDB %s)", os.getpid(),
                 self.config.describe_source(), redact_uri(self.mongodb_uri))
        self.ready(f"ok {os.getpid()}")
        try:
            self._supervise()
        finally:
            self._stop_all()
        return 0

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requests += 1

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def _supervise(self) -> None:
        last_monitor_start = time.monotonic()
        while not self.stop_requests:
            time.sleep(0.2)
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            if self.receiver is not None and not self.receiver.is_alive():
                assert self.log_queue is not None
                self.log_queue.reader_gone()
                self._start_receiver()
                log.error("the log receiver died and was restarted")
            if self.mongo is not None and not self.mongo.alive():
                log.error("the embedded mongod died; restarting it")
                try:
                    self.mongo.start()
                except ExecdError as exc:
                    log.critical("cannot restart the embedded mongod: %s", exc)
            if (self.monitor is not None and not self.monitor.is_alive()
                    and time.monotonic() - last_monitor_start >= RESTART_BACKOFF):
                log.error("the monitor (pid %s) %s; restarting it", self.monitor.pid,
                          describe_exit(self.monitor))
                self._start_monitor(wait=False)
                last_monitor_start = time.monotonic()

    # ------------------------------------------------------------------ children
    def _start_receiver(self) -> None:
        engine = self.config.engine
        notification = self.config.notification
        args = {"log_file": engine.log_file, "mail_critical_to": engine.mail_critical_to,
                "smtp_host": notification.smtp_host, "smtp_port": notification.smtp_port,
                "sender": notification.sender, "echo": self.echo_logs}
        self.receiver = self.mp.Process(target=receive_logs, args=(self.log_queue, args),
                                        name="log-receiver")
        self.receiver.start()

    def _start_database(self) -> None:
        if self.config.mongodb.uri:
            # A wrong password or a missing role stops the start here, in words naming the
            # database, rather than as a monitor that never reports ready.
            check_database_access(self.config.mongodb.uri, self.config.mongodb.database,
                                  timeout=self.config.mongodb.server_selection_timeout)
            return
        mongo = EmbeddedMongo(self.config.engine.state_dir / "mongodb",
                              self.config.mongodb.embedded_port, self.config.mongodb.mongod)
        self.mongo = mongo
        log.info("starting the embedded MongoDB (%s) on port %d", mongo.binary, mongo.port)
        self.mongodb_uri = mongo.start()
        self.config.engine.mongodb_uri_file.write_text(self.mongodb_uri + "\n")

    def _start_monitor(self, *, wait: bool) -> None:
        if self.control is not None:
            self.control.close()
        self.control, child_end = self.mp.Pipe()
        self.monitor = self.mp.Process(
            target=run_monitor,
            args=(self.config, self.mongodb_uri, self.instance, self.log_queue, child_end),
            name="monitor",
        )
        self.monitor.start()
        child_end.close()
        if wait:
            self._expect("ready", READY_TIMEOUT)

    def _expect(self, what: str, timeout: float) -> None:
        assert self.control is not None and self.monitor is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.control.poll(0.2):
                try:
                    message, _ = self.control.recv()
                except EOFError:
                    break
                if message == what:
                    return
            elif not self.monitor.is_alive():
                break
        raise ExecdError(f"the monitor did not report {what!r}"
                         f" (it {describe_exit(self.monitor)}; see {self.config.engine.log_file})")

    def _stop_all(self) -> None:
        if self.monitor is not None and self.monitor.is_alive():
            log.info("stopping: waiting for the actors to finish their work in hand")
            self.monitor.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT + 10
            while self.monitor.is_alive() and time.monotonic() < deadline:
                self.monitor.join(0.2)
                if self.stop_requests > 1:
                    log.warning("second stop request: killing the monitor and its actors")
                    _kill_tree(self.monitor.pid)
                    break
            if self.monitor.is_alive():
                _kill_tree(self.monitor.pid)
            self.monitor.join()
        if self.mongo is not None:
            self.mongo.stop()
            self.config.engine.mongodb_uri_file.unlink(missing_ok=True)
        self.status_file.unlink(missing_ok=True)
        log.info("execd stopped")
        if self.receiver is not None and self.receiver.is_alive():
            assert self.log_queue is not None
            self.log_queue.put(None)
            self.receiver.join(10)
            if self.receiver.is_alive():
                self.receiver.kill()

    # ------------------------------------------------------------------ reload
    def reload(self) -> None:
        """Re-read the configuration and plugins; apply them, or keep the old ones and say why."""
        result: dict[str, Any] = {"at": time.time()}
        try:
            new = load_config(self.config.path)
            check_privilege(new.identity)
            # Plugins and routes must load before anything changes.
            load_registry(new, LoaderRole.master(self.instance))
        except ExecdError as exc:
            log.error("reload refused, the previous configuration stays in force: %s", exc)
            write_json(self.reload_file, {**result, "ok": False, "error": str(exc)})
            return
        kept = restart_only_changes(self.config, new)
        if kept:
            log.warning("reload: these changes need a restart and are not applied: %s",
                        ", ".join(kept))
            new = replace(new, engine=replace(new.engine, **{
                k: getattr(self.config.engine, k)
                for k in ("state_dir", "jobs_dir", "pid_file", "log_file", "umask")
            }), mongodb=self.config.mongodb)
        self.config = new
        logging.getLogger().setLevel(new.engine.log_level)
        try:
            assert self.control is not None
            self.control.send(("reload", new))
            self._expect("reloaded", STOP_TIMEOUT + READY_TIMEOUT)
        except (ExecdError, OSError) as exc:
            log.error("reload failed in the monitor: %s", exc)
            write_json(self.reload_file, {**result, "ok": False, "error": str(exc)})
            return
        log.info("reloaded the configuration from %s", new.describe_source())
        write_json(self.reload_file, {**result, "ok": True, "needs_restart": kept})


def _kill_tree(pid: int | None) -> None:
    """SIGKILL a process and its children (the Monitor and its actors)."""
    if pid is None:
        return
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        kids = [int(p) for p in children.read_text().split()]
    except OSError:
        kids = []
    for victim in (pid, *kids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
