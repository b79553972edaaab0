"""Example execution system: ``local_nice``, Local jobs at a lower CPU priority.

A drop-in plugin module for execd: put it into a folder named by ``[plugins] systems`` in
execd.ini (this folder is one) and use its class in a ``[systems]`` section::

    [plugins]
    systems = /etc/execd/systems

    [systems]
        [[background]]
        class = local_nice
        slots = 2
        niceness = 15
        # Capabilities for matchmaking (valid for every class; see docs/routing.md):
        max_cores = 1
        max_memory_mb = 2048

Then ``execd reload``. ``execd systems`` lists the class with this file as its source.

An execution system is a subclass of ``execution_engine.ExecutionSystem`` with a unique ``kind``
(the value of ``class`` in the config) that implements ``run``, ``get_statuses`` and ``kill``
(see ``execution_engine/systems/base.py`` for the contract: what each method guarantees and which
exceptions mean what, and "Kill safety": ``kill``, ``hold`` and ``release`` act only on what the
engine recorded for the job, never on a document's ``native_id`` alone). This one only changes
how Local starts a job and inherits the rest, its kill checks included. The contract suite
``tests/test_contract_systems.py`` shows what every system is expected to do.

Its own configuration keys are declared in ``option_spec`` (configspec syntax, checked when the
configuration is loaded; an error names the section and the key); the checked values arrive in
``self.options``. The keys every system shares (``status_interval``, ``max_cores``,
``max_memory_mb``, ``max_walltime_s``, ``queues``, ``software``) must not be redeclared.

Two ways to register a system class (use either):

1. the class decorator ``@execution_system`` (this file);
2. the pluggy hook::

       @hookimpl
       def execd_execution_systems():
           return [LocalNiceSystem]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from execution_engine import JobSpec, Submission, execution_system
from execution_engine.systems.local import LocalSystem


@execution_system
class LocalNiceSystem(LocalSystem):
    """Local jobs started with a higher nice value (a lower CPU priority).

    Linux keeps a nice value per thread, and a new process starts with the value of the thread
    that created it. So jobs are started from one helper thread whose own nice value was raised
    once: each job has its priority from its first instruction on (no window where it runs at
    the engine's priority), and no privilege is needed (raising a nice value always is allowed).
    """

    kind: ClassVar[str] = "local_nice"
    option_spec: ClassVar[Mapping[str, str]] = {
        **LocalSystem.option_spec,
        "niceness": "integer(min=0, max=19, default=10)",
    }

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.niceness = int(self.options["niceness"])
        self._starter: ThreadPoolExecutor | None = None  # made at the first run

    def _lower_priority(self) -> None:
        # Runs in the helper thread: only that thread (and what it starts) is reniced.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)

    def run(self, job: JobSpec) -> Submission:
        if self._starter is None:
            self._starter = ThreadPoolExecutor(max_workers=1, initializer=self._lower_priority,
                                               thread_name_prefix=f"{self.name}-starter")
        # LocalSystem.run in the helper thread; its exceptions (NoCapacity, SubmissionRejected)
        # come back here unchanged, which is what the engine expects of run().
        return self._starter.submit(super().run, job).result()

    def close(self) -> None:
        if self._starter is not None:
            self._starter.shutdown(wait=True)
            self._starter = None
        super().close()
