"""The Grid Engine execution system (DRMAA) against a real one-host cell.

Every system call runs in a DRMAA worker process started with the system's
``process_environment`` (see ``tests/cluster_helpers.py``): a new worker is a new process with a
new DRMAA session, which is how the engine's Submit and Status actors, and a restarted daemon,
see Grid Engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from execution_engine.errors import SubmissionRejected
from execution_engine.states import JobState
from execution_engine.systems.base import Resources
from execution_engine.systems.ogs import OgsSystem
from tests.cluster_helpers import (
    Cluster,
    ClusterContract,
    DrmaaWorker,
    make_job,
    sge_cluster,
    submit,
    wait_reports,
)

pytestmark = pytest.mark.cluster

__all__ = ["sge_cluster"]  # a fixture used by name


@pytest.fixture
def cluster(sge_cluster: Cluster) -> Cluster:
    return sge_cluster


@pytest.fixture
def factory(sge_cluster: Cluster) -> Iterator[Callable[..., DrmaaWorker]]:
    workers: list[DrmaaWorker] = []

    def make(**overrides: Any) -> DrmaaWorker:
        worker = DrmaaWorker(OgsSystem, "sge-test", {**sge_cluster.options, **overrides})
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close()


class TestOgsContract(ClusterContract):
    # Grid Engine's DRMAA checks a job at submission (like `qsub -w e`): a request no queue
    # can satisfy is refused at once.
    impossible = Resources(cores=4096)
    refusal_words = "no suitable queues"


def test_unknown_parallel_environment_is_rejected(factory: Callable[..., DrmaaWorker],
                                                  tmp_path: Path) -> None:
    system = factory(parallel_environment="nosuchpe")
    with pytest.raises(SubmissionRejected, match='parallel environment "nosuchpe" does not'):
        system.run(make_job(tmp_path, ["true"], resources=Resources(cores=2)))


def test_requirements_reach_grid_engine(factory: Callable[..., DrmaaWorker],
                                        tmp_path: Path) -> None:
    system = factory()
    job = submit(system, make_job(
        tmp_path, ["sh", "-c", 'echo "$NSLOTS $QUEUE"'],
        resources=Resources(cores=2, memory_mb=200, walltime_s=120, queue="all.q")))
    reports, _ = wait_reports(system, [job])
    assert reports[job.job_id].state == JobState.FINISHED
    assert (job.job_dir / "job.stdout").read_text().split() == ["2", "all.q"]
