"""The Monitor process: the actor pools' supervisor, the change watcher and the sweeper in one
loop, and the daemon's health in its document.

Each part is its own module: :mod:`.supervision` (a state per actor, growing backoff, the
``failing`` state), :mod:`.watcher` (change stream -> bells) and :mod:`.sweeper` (lease
recovery, cancellations, bad states, split masters). This one composes them:

* publishes the actor table (``actors``) in the daemon's document in the ``daemons`` collection
  at start, whenever an actor's state changes, and with each heartbeat (``execd status`` reads
  it);
* on reload, restarts the actors with the new configuration (warm stop, then start): jobs running
  on execution systems are not touched.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pymongo.errors import PyMongoError
from setproctitle import setproctitle

from execution_engine.actors.base import POOLS, Actor, ActorContext, run_actor
from execution_engine.actors.building import BuildingActor
from execution_engine.actors.notification import NotificationActor
from execution_engine.actors.status import StatusActor
from execution_engine.actors.submit import SubmitActor
from execution_engine.apps.masters import SplitFollower
from execution_engine.bell import Bell
from execution_engine.config import EngineConfig
from execution_engine.logs import log_to_queue
from execution_engine.monitor.supervision import STOP_TIMEOUT, Supervisor
from execution_engine.monitor.sweeper import POLLING_SWEEP, Sweeper
from execution_engine.monitor.watcher import ChangeWatcher
from execution_engine.plugins import LoaderRole, declare_role, load_registry, system_options
from execution_engine.proc import die_with_parent, parent_gone
from execution_engine.store import JobStore
from execution_engine.systems.base import ExecutionSystem, host_name
from execution_engine.watch import BURST_POLL

log = logging.getLogger(__name__)

ACTOR_CLASSES: dict[str, type[Actor]] = {
    "building": BuildingActor,
    "submit": SubmitActor,
    "status": StatusActor,
    "notification": NotificationActor,
}


def process_environment(config: EngineConfig, role: LoaderRole | None = None
                        ) -> dict[str, str]:
    """Variables actor processes must be started with, as the execution systems ask (libdrmaa
    needs some before the interpreter starts)."""
    registry = load_registry(config, role)
    env: dict[str, str] = {}
    for section in config.systems:
        cls: type[ExecutionSystem] = registry.systems[section.cls]
        hook = getattr(cls, "process_environment", None)
        if hook is not None:
            env.update(hook(system_options(cls, section, config.engine.state_dir)))
    return env


def run_daemon_actor(actor_class: type[Actor], ctx: ActorContext) -> None:
    """Entry point of an actor process: it loads plugins as a worker of daemon ``instance``
    (falling back on the daemon's last working plugin set), then runs the actor."""
    declare_role(LoaderRole.worker(ctx.instance))
    run_actor(actor_class, ctx)


class Monitor:
    def __init__(self, config: EngineConfig, mongodb_uri: str, instance: str, log_queue: Any,
                 control: multiprocessing.connection.Connection) -> None:
        self.config = config
        self.mongodb_uri = mongodb_uri
        self.instance = instance
        self.log_queue = log_queue
        self.control = control
        self.role = LoaderRole.worker(instance)
        self.mp = multiprocessing.get_context("spawn")
        self.bells = {kind: Bell(self.mp) for kind in POOLS}
        self.stopping = False
        self.split_masters = SplitFollower(f"{instance}/monitor")
        self.supervisor = Supervisor(self._spawn, self._actor_died)
        self.store: JobStore
        self.sweeper: Sweeper
        self.watcher: ChangeWatcher

    # ------------------------------------------------------------------ process life
    def main(self) -> None:
        die_with_parent(signal.SIGTERM)
        self.parent = os.getppid()
        setproctitle("execd: monitor")
        log_to_queue(self.log_queue, self.config.engine.log_level, "monitor")
        declare_role(self.role)
        signal.signal(signal.SIGTERM, self._ask_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the master, checked
        self.store = JobStore.open(self.mongodb_uri, self.config.mongodb.database,
                                   timeout=self.config.mongodb.server_selection_timeout,
                                   app_name="execd-monitor")
        self.sweeper = Sweeper(self.store, self.instance, self.bells, self.split_masters)
        self.watcher = ChangeWatcher(self.store, self.bells, self.split_masters,
                                     poll_interval=self.config.monitor.poll_interval,
                                     guard=self._guard, stopping=lambda: self.stopping)
        try:
            self.prepare()
            self.start_pools()
            self.control.send(("ready", os.getpid()))
            self.loop()
        finally:
            self.stop_pools()
            # A killed master takes the embedded MongoDB with it: every call would wait for
            # the server selection timeout. The next daemon recovers this one's leases and
            # document (its pid is gone), so leave at once.
            if not parent_gone(self.parent):
                self.watcher.close()
                with contextlib.suppress(PyMongoError):
                    self.store.unregister_daemon(self.instance)
                self.store.close()

    def _ask_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def prepare(self) -> None:
        self.store.ensure_indexes()
        self.sweeper.recover_dead_daemons()
        self.store.register_daemon(self.instance, {"host": host_name(), "pid": os.getpid(),
                                                   "actors": []})
        self.sweeper.at_start()
        os.environ.update(process_environment(self.config, self.role))

    # ------------------------------------------------------------------ pools
    def _spawn(self, kind: str, index: int) -> multiprocessing.process.BaseProcess:
        ctx = ActorContext(self.config, self.mongodb_uri, self.instance, self.log_queue,
                           self.bells, index)
        process = self.mp.Process(target=run_daemon_actor, args=(ACTOR_CLASSES[kind], ctx),
                                  name=f"{kind}-{index}")
        process.start()
        return process

    def _actor_died(self, kind: str, index: int, pid: int) -> None:
        self._guard(lambda: self.sweeper.actor_died(kind, index, pid))

    def start_pools(self) -> None:
        self.supervisor.start([(kind, self.config.actors.pool_size(kind)) for kind in POOLS],
                              self.config.monitor.restart_backoff)
        self.publish_health()

    def stop_pools(self) -> None:
        """Warm stop: TERM every actor, wait for them to finish their batch, then KILL."""
        def wake() -> None:  # sleepers must wake to see their stop flag
            for kind, bell in self.bells.items():
                bell.ring(self.supervisor.size(kind))

        self.supervisor.stop(STOP_TIMEOUT, wake)

    def supervise(self) -> None:
        """Restart what died (as its record decides); publish the table when it changed."""
        restarted, changed = self.supervisor.check()
        for kind in restarted:
            self.bells[kind].ring()
        if changed:
            self._guard(self.publish_health)

    def publish_health(self) -> None:
        """Write the actor table into the daemon's document (a heartbeat too)."""
        self.store.update_daemon(self.instance, {"actors": self.supervisor.table()})

    # ------------------------------------------------------------------ main loop
    def loop(self) -> None:
        next_recovery = 0.0
        last_sweep = time.monotonic()
        while not self.stopping:
            if self.watcher.burst.bursting:
                self.watcher.poll_burst()
                self._poll_control(BURST_POLL)
            else:
                self.watcher.open()
                if self.watcher.stream is not None:
                    self.watcher.read()
                else:
                    self._poll_control(self.config.monitor.poll_interval)
            self._poll_control(0)
            self.supervise()
            now = time.monotonic()
            if now >= next_recovery:
                next_recovery = now + self.config.monitor.recovery_interval
                self._guard(self.periodic)
            # Without a stream, jobs with a bad state are only found by sweeping: sweep often.
            sweep_every = self.config.monitor.sweep_interval
            if self.watcher.polling:
                sweep_every = min(sweep_every, POLLING_SWEEP)
            if now - last_sweep >= sweep_every:
                last_sweep = now
                self._guard(self.sweeper.sweep)
            self._guard(self.sweeper.follow_split_masters)

    def periodic(self) -> None:
        """Every recovery interval: recovery, and the heartbeat with the actor table."""
        self.sweeper.recover()
        self.publish_health()  # the heartbeat, with the actor table

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except PyMongoError as exc:
            log.warning("MongoDB error, will retry: %s", exc)

    def _poll_control(self, timeout: float) -> None:
        if not self.control.poll(timeout):
            return
        try:
            command, payload = self.control.recv()
        except EOFError:  # the master is gone: stop too
            self.stopping = True
            return
        if command == "reload":
            self.reload(payload)

    def reload(self, config: EngineConfig) -> None:
        log.info("reloading: restarting the actors with the configuration from %s",
                 config.describe_source())
        self.stop_pools()
        self._guard(self.publish_health)
        self.config = config
        self.watcher.poll_interval = config.monitor.poll_interval
        os.environ.update(process_environment(config, self.role))
        self.start_pools()
        self.control.send(("reloaded", None))


def run_monitor(config: EngineConfig, mongodb_uri: str, instance: str, log_queue: Any,
                control: multiprocessing.connection.Connection) -> None:
    """Process entry point of the Monitor."""
    Monitor(config, mongodb_uri, instance, log_queue, control).main()
