"""What every actor process shares: start-up, the work loop, wake-ups and warm stop.

An actor is a long-lived process of one kind (building, submit, status, notification) that takes
batches of work from MongoDB by atomic claims. It sleeps on its pool's *bell* (a semaphore rung by
the Monitor when the change stream shows work for the pool, and by upstream actors when they hand
work on) or until the poll interval passes, so it works even without change streams.

Stopping: the first SIGTERM asks the actor to stop after the batch in hand (a warm stop: work is
finished, or given back, never left half done); the Monitor sends SIGKILL if that takes too long,
and expired leases bring back anything left.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import FrameType
from typing import Any, ClassVar

from pymongo.errors import PyMongoError
from setproctitle import setproctitle

from execution_engine.bell import Bell
from execution_engine.config import EngineConfig
from execution_engine.errors import NoAccount
from execution_engine.identity import Account, AccountResolver, OwnerRefused, resolver_from_config
from execution_engine.identity.claims import check_claim
from execution_engine.job import Job
from execution_engine.logs import job_extra, log_to_queue
from execution_engine.plugins import Registry, load_registry
from execution_engine.proc import close_on_exec_all, die_with_parent, parent_gone
from execution_engine.reasons import Reason
from execution_engine.routing.guard import RESTART_AFTER_ABANDONED
from execution_engine.states import JobState
from execution_engine.store import JobStore, utcnow
from execution_engine.transitions import Change, end_fields, makes_notification_due, transition

log = logging.getLogger(__name__)

POOLS = ("building", "submit", "status", "notification")
ACCOUNT_LEASES = "account_leases"
"""The collection of pool accounts' leases (``[identity] mapping = pool``)."""


@dataclass(frozen=True)
class ActorContext:
    """What the Monitor gives each actor process (picklable: actors are spawned)."""

    config: EngineConfig
    mongodb_uri: str
    instance: str
    """The daemon instance id: ``<host>/<uuid>``; lease owners start with it."""
    log_queue: object
    bells: dict[str, Bell]
    index: int = 0


class Actor(ABC):
    """Base of the four actors. Subclasses implement :meth:`work_once`."""

    kind: ClassVar[str]

    def __init__(self, ctx: ActorContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.name = f"{self.kind}-{ctx.index}"
        self.owner = f"{ctx.instance}/{self.name}/{os.getpid()}"
        self.stopping = False
        self.store: JobStore
        self.bell = ctx.bells[self.kind]
        self._registry: Registry | None = None
        self._accounts: AccountResolver | None = None

    # ------------------------------------------------------------------ process life
    def main(self) -> None:
        die_with_parent(signal.SIGTERM)
        close_on_exec_all()
        self.parent = os.getppid()
        setproctitle(f"execd: {self.kind}-actor")
        log_to_queue(self.ctx.log_queue, self.config.engine.log_level, self.name)
        signal.signal(signal.SIGTERM, self._ask_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master handles ^C for the tree
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.umask(self.config.engine.umask)
        self.store = JobStore.open(self.ctx.mongodb_uri, self.config.mongodb.database,
                                   timeout=self.config.mongodb.server_selection_timeout,
                                   app_name=f"execd-{self.name}",
                                   max_document_bytes=self.config.engine.max_document_bytes)
        log.debug("started as %s", self.owner)
        try:
            self.setup()
            self.loop()
        finally:
            self.teardown()
            self.store.close()
        log.debug("stopped")

    def _ask_stop(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: a signal handler should not block, and ringing takes the semaphore's
        # own lock. The Monitor rings every bell after sending TERM, and waits are bounded by
        # the poll interval anyway.
        self.stopping = True

    def loop(self) -> None:
        backoff = 0.0
        while not self.stopping:
            if parent_gone(self.parent):
                log.warning("the monitor is gone: stopping")
                break
            self.bell.clear()
            try:
                did_work = self.work_once()
                backoff = 0.0
            except PyMongoError as exc:
                backoff = min(max(backoff * 2, 0.5), 30.0)
                log.warning("MongoDB error, retrying in %.1fs: %s", backoff, exc)
                time.sleep(backoff)
                continue
            if not did_work and not self.stopping:
                self.idle()

    def idle(self) -> None:
        """Sleep until the bell rings or the idle timeout passes."""
        self.bell.wait(self.idle_timeout())

    def idle_timeout(self) -> float:
        """How long to sleep when there is nothing to do (a bell ends the sleep early)."""
        return self.config.monitor.poll_interval

    def ring(self, *pools: str) -> None:
        """Tell other pools they have work (faster than waiting for the change stream)."""
        for pool in pools:
            self.ctx.bells[pool].ring()

    def hand_on(self, changes: Sequence[Change], *pools: str) -> None:
        """After writing ``changes``: ring ``pools``, and the notification pool when one of the
        changes made a notification due (a needless ring costs the notification actor a claim
        that finds nothing)."""
        self.ring(*pools, *(["notification"] if makes_notification_due(changes) else []))

    def restart_if_rules_hang(self, abandoned: int) -> None:
        """Stop warmly (the Monitor starts a fresh actor) once ``abandoned`` routing-rule threads
        hang: each may hold memory, sockets or locks that only the end of the process frees
        (``execution_engine.routing.guard``)."""
        if abandoned >= RESTART_AFTER_ABANDONED and not self.stopping:
            log.warning("%d routing rule threads are hung; restarting this actor to free them",
                        abandoned)
            self.stopping = True

    def isolated(self, handle: Callable[[Job], Change], job: Job) -> Change:
        """``handle(job)``, or, when it raises, the job ended in ``error`` with the reason: one
        document never stops the others (nor, by crashing the actor, the pool)."""
        try:
            return handle(job)
        except Exception as exc:
            log.exception("unexpected failure on this job", extra=job_extra(job.id))
            state = job.state
            if state is None:  # cannot happen for a claimed job; keep the lease rules anyway
                raise
            return transition(job.id, state, JobState.ERROR, by=self.owner,
                              lease_token=job.lease_token, reason=Reason.INTERNAL_ERROR.value,
                              message=f"internal error while {state.value}: {exc!r}"[:1000],
                              fields=end_fields(job.notify))

    def registry(self) -> Registry:
        """The plugins of this actor's configuration (loaded once, at first use)."""
        if self._registry is None:
            self._registry = load_registry(self.config)
        return self._registry

    def accounts(self) -> AccountResolver | None:
        """How job owners become local accounts (``[identity]``), made at first use; None when
        jobs run as the daemon's own account. A map file's table comes with the configuration
        (read at start and at each reload, which starts new actors), so a changed file applies
        to the jobs built and submitted after the reload."""
        if self._accounts is None and self.config.identity.enabled:
            self._accounts = resolver_from_config(
                self.config.identity, leases=self.store.db[ACCOUNT_LEASES],
                hook=self.registry().manager.hook.execd_map_owner)
        return self._accounts

    def account_of(self, job: Job) -> Account | None:
        """The local account ``job`` runs as, None for the daemon's own (``[identity]`` off);
        raises NoAccount naming the owner and the mapping that refused it, or why its owner
        claim does not hold (``[identity] [[clients]]``: checked first, at every call, so that
        an owner or project rewritten after the build is refused at submission)."""
        resolver = self.accounts()
        if resolver is None:
            return None
        try:
            check_claim(self.config.identity, job.doc)
            return resolver.account_for(job.doc)
        except OwnerRefused as exc:
            raise NoAccount(job.id, str(exc)) from exc

    @staticmethod
    def now() -> datetime:
        return utcnow()

    # ------------------------------------------------------------------ for subclasses
    def setup(self) -> None:  # noqa: B027 - optional hook
        """Prepare what the actor needs after the store is open."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release what ``setup`` took."""

    @abstractmethod
    def work_once(self) -> bool:
        """Do one batch of work; True when there was any (the loop then goes on at once)."""


class LeaseKeeper:
    """Keeps the leases of a claimed batch alive while the actor works through it.

    A batch may take longer than a lease (a slow scheduler command, a full Local system): were the
    lease to expire, recovery would hand the same jobs to another actor while this one still
    works on them. A thread renews the batch's leases every third of their length until the batch
    is done; if the actor dies, so does the thread, and the leases expire as they should.
    """

    def __init__(self, store: JobStore, jobs: list[dict[str, Any]], seconds: float) -> None:
        self.store = store
        self.by_token: dict[str, list[Any]] = {}
        for doc in jobs:
            self.by_token.setdefault(doc["lease"]["token"], []).append(doc["_id"])
        self.seconds = seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._done.wait(self.seconds / 3):
            try:
                for token, ids in self.by_token.items():
                    self.store.renew_leases(ids, token, self.seconds)
            except PyMongoError as exc:
                log.warning("cannot renew leases: %s", exc)


def run_actor(actor_class: type[Actor], ctx: ActorContext) -> None:
    """Process entry point (top level, so that the spawn start method can pickle it)."""
    try:
        actor_class(ctx).main()
    except Exception:
        # Into the daemon's log (not only stderr), so that the admin sees why it died.
        log.critical("%s actor failed", actor_class.kind, exc_info=True)
        raise SystemExit(1) from None
