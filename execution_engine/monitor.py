"""The Monitor process: watches the jobs collection and keeps the actor pools working.

* Learns of new and changed jobs from a MongoDB change stream when the server is a replica set
  (falls back to polling otherwise, and while the stream is down) and rings the bell of the pool
  that has work: inserts and ``to be built`` -> building; ``to be submitted`` -> submit; active
  states and cancellations -> status; ended states -> notification. During a burst it polls a
  few index keys instead of reading the stream (``execution_engine.watch`` says why and when).
* Runs the actor pools (sizes from ``[actors]``) as long-lived processes and restarts one that
  dies, giving its leased jobs back at once.
* Recovers jobs whose lease expired, ends jobs cancelled before submission, and ends in ``error``
  jobs whose state is missing or unknown.
* Keeps split masters in step with their subjobs (``execution_engine.apps.masters``).
* On reload, restarts the actors with the new configuration (warm stop, then start): jobs running
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
from collections.abc import Mapping
from types import FrameType
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError
from setproctitle import setproctitle

from execution_engine.actors.base import POOLS, ActorContext, run_actor
from execution_engine.actors.building import BuildingActor
from execution_engine.actors.notification import NotificationActor
from execution_engine.actors.status import StatusActor
from execution_engine.actors.submit import SubmitActor
from execution_engine.apps.masters import SplitFollower
from execution_engine.bell import Bell
from execution_engine.config import EngineConfig
from execution_engine.logs import log_to_queue
from execution_engine.proc import die_with_parent
from execution_engine.registry import load_registry, system_options
from execution_engine.states import ACTIVE_STATES, ENDED_STATES, JobState, parse_state
from execution_engine.store import JobStore
from execution_engine.systems.base import ExecutionSystem, host_name
from execution_engine.watch import BURST_POLL, BurstWatch

log = logging.getLogger(__name__)

ACTOR_CLASSES = {
    "building": BuildingActor,
    "submit": SubmitActor,
    "status": StatusActor,
    "notification": NotificationActor,
}
STOP_TIMEOUT = 30.0
"""Seconds actors get to finish their batch at a warm stop before they are killed."""

# The stream carries what actors cannot tell each other: new jobs, cancellations, and changes
# that open work for a pool or that no engine process would write (made by clients, by other
# daemons, or by recovery). Transitions an actor makes and hands on itself (building,
# submitting, running...) are left out: they are most of the traffic, and the actor rings the
# next pool directly.
_HANDED_ON_STATES = [JobState.BUILDING.value, JobState.SUBMITTING.value,
                     *(s.value for s in ACTIVE_STATES)]
_STREAM_PIPELINE: list[dict[str, Any]] = [
    {"$match": {"$or": [
        {"operationType": {"$in": ["insert", "replace"]}},
        {"updateDescription.updatedFields.state": {"$exists": True,
                                                   "$nin": _HANDED_ON_STATES}},
        {"updateDescription.updatedFields.cancel_requested": {"$exists": True}},
    ]}},
    {"$project": {
        "operationType": 1,
        "fullDocument.state": 1,
        "fullDocument.cancel_requested": 1,
        "updateDescription.updatedFields.state": 1,
        "updateDescription.updatedFields.cancel_requested": 1,
    }},
]


PIPELINE_STATES: frozenset[JobState | None] = frozenset({
    JobState.TO_BE_BUILT, JobState.BUILDING, JobState.TO_BE_SUBMITTED, JobState.SUBMITTING})
"""States of jobs on their way to an execution system: while some are, a burst goes on."""


def pool_for_state(state: JobState | None) -> str | None:
    """Which pool has work when a job enters ``state`` (None: nobody, or unknown state)."""
    if state is JobState.TO_BE_BUILT:
        return "building"
    if state is JobState.TO_BE_SUBMITTED:
        return "submit"
    if state in ACTIVE_STATES:
        return "status"
    if state in ENDED_STATES:
        return "notification"
    return None


def describe_exit(process: multiprocessing.process.BaseProcess) -> str:
    """A dead process's end in words."""
    code = process.exitcode
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def process_environment(config: EngineConfig) -> dict[str, str]:
    """Variables actor processes must be started with, as the execution systems ask (libdrmaa
    needs some before the interpreter starts)."""
    registry = load_registry(config)
    env: dict[str, str] = {}
    for section in config.systems:
        cls: type[ExecutionSystem] = registry.systems[section.cls]
        hook = getattr(cls, "process_environment", None)
        if hook is not None:
            env.update(hook(system_options(cls, section, config.engine.state_dir)))
    return env


class Monitor:
    def __init__(self, config: EngineConfig, mongodb_uri: str, instance: str, log_queue: Any,
                 control: multiprocessing.connection.Connection) -> None:
        self.config = config
        self.mongodb_uri = mongodb_uri
        self.instance = instance
        self.log_queue = log_queue
        self.control = control
        self.mp = multiprocessing.get_context("spawn")
        self.bells = {kind: Bell(self.mp) for kind in POOLS}
        self.pools: dict[str, list[multiprocessing.process.BaseProcess | None]] = {}
        self.restarts: dict[tuple[str, int], float] = {}
        self.stopping = False
        self.store: JobStore
        self.split_masters = SplitFollower(f"{instance}/monitor")
        self.burst = BurstWatch()

    # ------------------------------------------------------------------ process life
    def main(self) -> None:
        die_with_parent(signal.SIGTERM)
        setproctitle("execd: monitor")
        log_to_queue(self.log_queue, self.config.engine.log_level, "monitor")
        signal.signal(signal.SIGTERM, self._ask_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the master, checked
        self.store = JobStore.open(self.mongodb_uri, self.config.mongodb.database,
                                   timeout=self.config.mongodb.server_selection_timeout,
                                   app_name="execd-monitor")
        try:
            self.prepare()
            self.start_pools()
            self.control.send(("ready", os.getpid()))
            self.loop()
        finally:
            self.stop_pools()
            with contextlib.suppress(PyMongoError):
                self.store.unregister_daemon(self.instance)
            self.store.close()

    def _ask_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def prepare(self) -> None:
        self.store.ensure_indexes()
        self.recover_dead_daemons()
        self.store.register_daemon(self.instance, {"host": host_name(), "pid": os.getpid()})
        recovered = self.store.recover_expired(by="monitor")
        if any(recovered.values()):
            log.info("recovered jobs from expired leases: %s", recovered)
        self.store.cancel_unsubmitted(by="monitor")
        self.store.fail_unknown_states(by="monitor")
        os.environ.update(process_environment(self.config))

    def recover_dead_daemons(self) -> None:
        """Give back at once the leases of earlier daemons of this host that are gone."""
        for daemon in self.store.daemons_on(host_name()):
            if daemon["_id"] == self.instance or _pid_alive(daemon.get("pid")):
                continue
            log.info("daemon %s (pid %s) is gone: recovering its jobs", daemon["_id"],
                     daemon.get("pid"))
            self.store.expire_leases_of(daemon["_id"] + "/")
            self.store.unregister_daemon(daemon["_id"])

    # ------------------------------------------------------------------ pools
    def start_pools(self) -> None:
        for kind in POOLS:
            size = self.config.actors.pool_size(kind)
            self.pools[kind] = [None] * size
            for index in range(size):
                self._start_actor(kind, index)

    def _start_actor(self, kind: str, index: int) -> None:
        ctx = ActorContext(self.config, self.mongodb_uri, self.instance, self.log_queue,
                           self.bells, index)
        process = self.mp.Process(target=run_actor, args=(ACTOR_CLASSES[kind], ctx),
                                  name=f"{kind}-{index}")
        process.start()
        self.pools[kind][index] = process
        self.restarts[(kind, index)] = time.monotonic()

    def supervise(self) -> None:
        """Restart dead actors (not faster than ``restart_backoff``) and give back their jobs."""
        for kind, processes in self.pools.items():
            for index, process in enumerate(processes):
                if process is None or process.is_alive():
                    continue
                if process.exitcode is not None and process.pid is not None:
                    log.error("%s-actor %d (pid %d) terminated unexpectedly: it %s; restarting",
                              kind, index, process.pid, describe_exit(process))
                    self.store.expire_leases_of(f"{self.instance}/{kind}-{index}/{process.pid}")
                    self.store.recover_expired(by="monitor")
                    process.close()
                    processes[index] = None
                    self.restarts[(kind, index)] = time.monotonic()
            for index, process in enumerate(processes):
                last = self.restarts.get((kind, index), 0.0)
                if process is None and time.monotonic() - last >= \
                        self.config.monitor.restart_backoff:
                    self._start_actor(kind, index)
                    self.bells[kind].ring()

    def stop_pools(self) -> None:
        """Warm stop: TERM every actor, wait for them to finish their batch, then KILL."""
        alive = [p for procs in self.pools.values() for p in procs if p is not None]
        for process in alive:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for kind, bell in self.bells.items():
            bell.ring(len(self.pools.get(kind, [])))  # wake sleepers to see their stop flag
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("%s did not stop in %.0fs: killing it", process.name, STOP_TIMEOUT)
                process.kill()
                process.join()
        self.pools.clear()

    # ------------------------------------------------------------------ main loop
    def loop(self) -> None:
        stream = None
        resume_token = None
        next_recovery = 0.0
        last_sweep = time.monotonic()
        polling = False
        while not self.stopping:
            if self.burst.bursting:
                self._poll_burst()
                self._poll_control(BURST_POLL)
            else:
                if stream is None and not polling:
                    stream, polling = self._open_stream(resume_token)
                if stream is not None:
                    stream, resume_token = self._read_stream(stream, resume_token)
                else:
                    self._poll_control(self.config.monitor.poll_interval)
            self._poll_control(0)
            now = time.monotonic()
            if now >= next_recovery:
                next_recovery = now + self.config.monitor.recovery_interval
                self.periodic()
            # Without a stream, jobs with a bad state are only found by sweeping: sweep often.
            sweep_every = self.config.monitor.sweep_interval
            if polling:
                sweep_every = min(sweep_every, 10.0)
            if now - last_sweep >= sweep_every:
                last_sweep = now
                self._guard(lambda: self.store.fail_unknown_states(by="monitor"))
            self._guard(lambda: self.split_masters.tick(self.store))

    def _open_stream(self, resume_token: Mapping[str, Any] | None) -> tuple[Any, bool]:
        try:
            stream = self.store.jobs.watch(_STREAM_PIPELINE, max_await_time_ms=100,
                                           resume_after=resume_token)
        except OperationFailure as exc:
            if exc.code in (40573, 40415):  # not a replica set / change streams unsupported
                log.info("MongoDB offers no change streams (%s): polling every %.2fs",
                         exc, self.config.monitor.poll_interval)
                return None, True
            log.warning("cannot open the change stream: %s", exc)
            return None, False
        except PyMongoError as exc:
            log.warning("cannot open the change stream: %s", exc)
            time.sleep(self.config.monitor.poll_interval)
            return None, False
        # Work may have arrived before the stream opened: let every pool look once.
        for bell in self.bells.values():
            bell.ring()
        return stream, False

    def on_change(self, change: Mapping[str, Any]) -> None:
        if change["operationType"] in ("insert", "replace"):
            doc = change.get("fullDocument") or {}
            raw_state = doc.get("state")
            cancel = doc.get("cancel_requested")
        else:
            fields = change.get("updateDescription", {}).get("updatedFields", {})
            raw_state = fields.get("state")
            cancel = fields.get("cancel_requested")
        if raw_state is not None or change["operationType"] != "update":
            self.split_masters.note()  # a subjob may have moved: its master may follow
            state = parse_state(raw_state)
            if state is None:
                self._guard(lambda: self.store.fail_unknown_states(by="monitor"))
            pool = pool_for_state(state)
            if pool is not None:
                self.bells[pool].ring()
            if state in ENDED_STATES:
                self.bells["submit"].ring()  # a slot may have freed
        if cancel is True:
            self.split_masters.note()
            self.bells["status"].ring()
            self._guard(lambda: self.store.cancel_unsubmitted(by="monitor"))
        self._guard(lambda: self.split_masters.tick(self.store))  # at most every min_gap

    def _read_stream(self, stream: Any, resume_token: Mapping[str, Any] | None
                     ) -> tuple[Any, Mapping[str, Any] | None]:
        """Handle what the stream has (waiting up to its await time); the stream and resume
        token to go on with: none when the stream broke (reopened where it stopped) or a burst
        began (reopened afresh after it)."""
        try:
            change = stream.try_next()
            while change is not None and not self.stopping:
                self.on_change(change)
                if self.burst.on_event():
                    log.debug("burst: polling instead of reading the change stream")
                    stream.close()
                    return None, None
                change = stream.try_next() if stream.alive else None
            return stream, stream.resume_token
        except PyMongoError as exc:
            log.warning("change stream interrupted, polling until it reopens: %s", exc)
            time.sleep(self.config.monitor.poll_interval)
            return None, resume_token

    def _poll_burst(self) -> None:
        """One poll during a burst: ring the pools that have work, act on cancellations and
        unknown states, and tell the burst watch whether the pipeline still holds jobs."""
        try:
            backlog = self.store.backlog()
        except PyMongoError as exc:
            log.warning("MongoDB error during a burst, back to the change stream: %s", exc)
            self.burst.end()
            return
        states = {parse_state(value) for value in backlog.states}
        cancelled = {parse_state(value) for value in backlog.cancelled_states}
        if JobState.TO_BE_BUILT in states:
            self.bells["building"].ring()
        if JobState.TO_BE_SUBMITTED in states:
            self.bells["submit"].ring()
        if backlog.notification_due:
            self.bells["notification"].ring()
        if cancelled & set(ACTIVE_STATES):
            self.bells["status"].ring()
        if cancelled & {JobState.TO_BE_BUILT, JobState.TO_BE_SUBMITTED}:
            self._guard(lambda: self.store.cancel_unsubmitted(by="monitor"))
        if None in states:
            self._guard(lambda: self.store.fail_unknown_states(by="monitor"))
        self.split_masters.note()  # subjobs may have moved
        if self.burst.on_poll(bool(states & PIPELINE_STATES)):
            log.debug("burst over: reading the change stream again")

    def periodic(self) -> None:
        def work() -> None:
            self.supervise()
            recovered = self.store.recover_expired(by="monitor")
            if recovered.get("building"):
                self.bells["building"].ring()
            if recovered.get("submitting"):
                self.bells["submit"].ring()
            if recovered.get("notification"):
                self.bells["notification"].ring()
            if self.store.cancel_unsubmitted(by="monitor"):
                self.bells["notification"].ring()
            self.store.heartbeat(self.instance)

        self._guard(work)

    def _guard(self, action: Any) -> None:
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
        self.config = config
        os.environ.update(process_environment(config))
        self.start_pools()
        self.control.send(("reloaded", None))


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_monitor(config: EngineConfig, mongodb_uri: str, instance: str, log_queue: Any,
                control: multiprocessing.connection.Connection) -> None:
    """Process entry point of the Monitor."""
    Monitor(config, mongodb_uri, instance, log_queue, control).main()
