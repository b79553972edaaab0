"""The sweeper: the Monitor's periodic repairs of the jobs collection.

* At start, gives back at once the leases of earlier daemons of this host that are gone.
* Every ``[monitor] recovery_interval``: recovers jobs whose lease expired (and rings the pools
  that get them back), ends jobs cancelled before submission.
* Every ``[monitor] sweep_interval`` (at most every :data:`POLLING_SWEEP` seconds without a
  change stream, since nothing else then sees bad documents): restores the engine's states over
  clients' writes (``JobStore.enforce_engine_states``) and ends in ``error`` jobs whose state is
  missing or unknown.
* Whenever asked: keeps split masters in step with their subjobs
  (:class:`execution_engine.apps.masters.SplitFollower`, which limits its own pace).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from execution_engine.apps.masters import SplitFollower
from execution_engine.bell import Bell
from execution_engine.store import JobStore
from execution_engine.systems.base import host_name

log = logging.getLogger(__name__)

POLLING_SWEEP = 10.0
"""Seconds between sweeps at most when the server offers no change stream."""


def pid_alive(pid: object) -> bool:
    """True when ``pid`` is a process of this host (one we may not signal counts)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Sweeper:
    """The repairs above, on ``store``; MongoDB errors are the caller's to guard."""

    def __init__(self, store: JobStore, instance: str, bells: Mapping[str, Bell],
                 split: SplitFollower) -> None:
        self.store = store
        self.instance = instance
        self.bells = bells
        self.split = split

    def at_start(self) -> None:
        """The repairs a starting daemon owes its predecessors, before any actor runs (after
        :meth:`recover_dead_daemons`)."""
        recovered = self.store.recover_expired(by="monitor")
        if any(recovered.values()):
            log.info("recovered jobs from expired leases: %s", recovered)
        self.store.cancel_unsubmitted(by="monitor")
        self.sweep()

    def recover_dead_daemons(self) -> None:
        """Give back at once the leases of earlier daemons of this host that are gone."""
        for daemon in self.store.daemons_on(host_name()):
            if daemon["_id"] == self.instance or pid_alive(daemon.get("pid")):
                continue
            log.info("daemon %s (pid %s) is gone: recovering its jobs", daemon["_id"],
                     daemon.get("pid"))
            self.store.expire_leases_of(daemon["_id"] + "/")
            self.store.unregister_daemon(daemon["_id"])

    def actor_died(self, kind: str, index: int, pid: int) -> None:
        """Give back at once the jobs a dead actor held."""
        self.store.expire_leases_of(f"{self.instance}/{kind}-{index}/{pid}")
        self.store.recover_expired(by="monitor")

    def recover(self) -> None:
        """Recover expired leases and end cancelled unsubmitted jobs, ringing who has work."""
        recovered = self.store.recover_expired(by="monitor")
        if recovered.get("building"):
            self.bells["building"].ring()
        if recovered.get("submitting"):
            self.bells["submit"].ring()
        if recovered.get("notification"):
            self.bells["notification"].ring()
        if self.store.cancel_unsubmitted(by="monitor"):
            self.bells["notification"].ring()
        if self.store.resubmit_requested_jobs(by="monitor"):  # requests the stream missed
            self.bells["building"].ring()

    def sweep(self) -> None:
        """Restore the engine's states over clients' writes; end unknown states in error."""
        restored = self.store.enforce_engine_states(by="monitor")
        if restored:
            log.warning("restored the engine's state of %d jobs written by clients", restored)
            for bell in self.bells.values():  # restored jobs may be in any pool's states
                bell.ring()
        self.store.fail_unknown_states(by="monitor")

    def follow_split_masters(self) -> None:
        self.split.tick(self.store)
