"""The Monitor: supervision of the actor pools (:mod:`.supervision`), the change watcher
(:mod:`.watcher`) and the sweeper (:mod:`.sweeper`), composed by :mod:`.core`."""

from execution_engine.monitor.core import (
    ACTOR_CLASSES,
    Monitor,
    process_environment,
    run_daemon_actor,
    run_monitor,
)
from execution_engine.monitor.supervision import (
    FAILING_RESTARTS,
    FAILING_WINDOW,
    MAX_BACKOFF,
    START_SECONDS,
    STOP_TIMEOUT,
    ActorRecord,
    ActorState,
    Supervisor,
    describe_exit,
)
from execution_engine.monitor.sweeper import Sweeper
from execution_engine.monitor.watcher import (
    PIPELINE_STATES,
    STREAM_PIPELINE,
    ChangeWatcher,
    client_wrote_state,
    pool_for_state,
)

__all__ = [
    "ACTOR_CLASSES",
    "FAILING_RESTARTS",
    "FAILING_WINDOW",
    "MAX_BACKOFF",
    "PIPELINE_STATES",
    "START_SECONDS",
    "STOP_TIMEOUT",
    "STREAM_PIPELINE",
    "ActorRecord",
    "ActorState",
    "ChangeWatcher",
    "Monitor",
    "Supervisor",
    "Sweeper",
    "client_wrote_state",
    "describe_exit",
    "pool_for_state",
    "process_environment",
    "run_daemon_actor",
    "run_monitor",
]
