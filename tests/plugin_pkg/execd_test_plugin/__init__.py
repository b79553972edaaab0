"""An execd plugin distributed as a package, registered through the ``execd.plugins`` entry
point group: the execution system ``pkg_local`` and the routing rule ``pkg_owner_is``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from execution_engine import JobSpec, Submission, hookimpl
from execution_engine.systems.local import LocalSystem

MARKER = "pkg_local"
"""Written into the job's engine directory by ``pkg_local``: proof that it ran the job."""


class PkgLocalSystem(LocalSystem):
    """Local, leaving a marker file in each job's engine directory."""

    kind: ClassVar[str] = "pkg_local"

    def run(self, job: JobSpec) -> Submission:
        (job.script.parent / MARKER).write_text(self.name + "\n")
        return super().run(job)


def pkg_owner_is(job: Mapping[str, Any], owner: str) -> bool:
    return job.get("owner") == owner


@hookimpl
def execd_execution_systems() -> list[type[LocalSystem]]:
    return [PkgLocalSystem]


@hookimpl
def execd_routing_rules() -> Mapping[str, Any]:
    return {"pkg_owner_is": pkg_owner_is}
