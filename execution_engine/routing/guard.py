"""Routing with a time limit per rule, so that a hung rule cannot stop job submission.

Rules are plugin code running inside the Submit actor. A rule that raises is easy (its verdict is
a failure and the job ends in ``error``); a rule that never returns is not: Python cannot stop a
thread. So the :class:`RuleGuard` evaluates the routes of a job in a worker thread and waits for
the answer; the worker reports which rule it is in and since when, and when one rule has been
running for longer than ``[plugins] rule_timeout`` the guard gives up: it raises
:class:`RuleTimeout` (the job ends in ``error`` naming the rule), abandons the worker and starts
a fresh one for the next job.

An abandoned worker thread is leaked until its rule returns (it then exits without touching
anything) or until the process ends: it is a daemon thread, so it never delays the actor's exit.
Because each one may hold memory, sockets or locks, the actor that routes (the Submit actor, or
the Building actor for application jobs, which are routed while built) restarts itself (a warm
stop; the Monitor starts a new one) once :data:`RESTART_AFTER_ABANDONED` workers have been
abandoned.

A rule stuck in C code that holds the GIL (a pathological regular expression, for instance)
stops every thread of the process and cannot be guarded this way; keep such work out of rules.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from execution_engine.errors import ExecdError
from execution_engine.routing.dispatcher import Decision, Dispatcher

#: Abandoned (hung) rule threads after which the Submit actor restarts itself.
RESTART_AFTER_ABANDONED = 3


class RuleTimeout(ExecdError):
    """A rule did not answer within the time limit; names the rule and the route."""

    def __init__(self, route: str, rule: str, timeout: float) -> None:
        self.route = route
        self.rule = rule
        self.timeout = timeout
        super().__init__(f"rule {rule} of route {route} did not answer within {timeout:g}s "
                         "(abandoned)")


class _Call:
    """One routing decision handed to the worker, and what the worker says about it."""

    def __init__(self, dispatcher: Dispatcher, job: Mapping[str, Any]) -> None:
        self.dispatcher = dispatcher
        self.job = job
        self.done = threading.Event()
        self.result: Decision | None = None
        self.error: BaseException | None = None
        # (route, rule, started): replaced as a whole, so a reader never sees half an update.
        self.current: tuple[str, str, float] = ("", "", time.monotonic())

    def on_rule(self, route: str, rule: str) -> None:
        self.current = (route, rule, time.monotonic())


class _Worker:
    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.abandoned = False
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"execd-rules-{next(self._ids)}")
        self.thread.start()

    def _loop(self) -> None:
        while True:
            call = self.inbox.get()
            if call is None:
                return
            try:
                call.result = call.dispatcher.decide(call.job, call.on_rule)
            except BaseException as exc:  # handed to the waiting thread, which re-raises it
                call.error = exc
            call.done.set()
            if self.abandoned:  # the guard gave up on us and has a new worker
                return


class RuleGuard:
    """Evaluates routing decisions with a per-rule time limit (see the module docstring)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.abandoned = 0
        """How many workers were abandoned with a hung rule (leaked threads)."""
        self._worker: _Worker | None = None

    def decide(self, dispatcher: Dispatcher, job: Mapping[str, Any]) -> Decision:
        """``dispatcher.decide(job)``, or RuleTimeout when one rule takes longer than the limit.

        Routes without rules run no plugin code and are decided in the calling thread.
        """
        if not dispatcher.has_rules:
            return dispatcher.decide(job)
        if self._worker is None:
            self._worker = _Worker()
        worker = self._worker
        call = _Call(dispatcher, job)
        worker.inbox.put(call)
        while not call.done.is_set():
            route, rule, started = call.current
            remaining = started + self.timeout - time.monotonic()
            if remaining > 0:
                call.done.wait(remaining)
                continue
            if call.done.is_set():
                break
            worker.abandoned = True
            worker.inbox.put(None)  # in case it answers after all: it then ends at once
            self._worker = None
            self.abandoned += 1
            raise RuleTimeout(route or "?", rule or "?", self.timeout)
        if call.error is not None:
            raise call.error
        if call.result is None:  # cannot happen: the worker sets one of the two
            raise ExecdError("routing worker answered nothing")
        return call.result

    def close(self) -> None:
        """Let an idle worker end (a hung one stays abandoned)."""
        if self._worker is not None:
            self._worker.inbox.put(None)
            self._worker = None
