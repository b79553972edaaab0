"""The Torque execution system: command mode against Slurm's Torque/PBS wrappers (qsub, qstat,
qdel, qhold, qrls from slurm-wlm-torque) on the one-host Slurm cluster.

What these wrappers do differently from Torque, and the tests allow for: a held job is shown as
``Q`` (reported ``pending``), every finished job as ``C``, and ``qhold`` on a running job
succeeds without effect (there is no suspension through them). The DRMAA mode (pbs-drmaa) has no
library here: only its construction is tested (``tests/test_batch_parsing.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from execution_engine.errors import SubmissionRejected
from execution_engine.states import JobState
from execution_engine.systems.base import Resources
from execution_engine.systems.torque import TorqueCliSystem, TorqueSystem
from tests.cluster_helpers import (
    Cluster,
    ClusterContract,
    make_job,
    slurm_cluster,
    submit,
    torque_cluster,
    wait_reports,
)

pytestmark = pytest.mark.cluster

__all__ = ["slurm_cluster", "torque_cluster"]  # fixtures used by name


@pytest.fixture
def cluster(torque_cluster: Cluster) -> Cluster:
    return torque_cluster


@pytest.fixture
def factory(torque_cluster: Cluster) -> Iterator[Callable[..., TorqueSystem]]:
    systems: list[TorqueSystem] = []

    def make(**overrides: Any) -> TorqueSystem:
        system = TorqueSystem("torque-test", {**torque_cluster.options, **overrides})
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.close()


class TestTorqueContract(ClusterContract):
    impossible = Resources(cores=4096)
    refusal_words = "More processors requested than permitted"


def test_command_mode_uses_the_configured_commands(torque_cluster: Cluster) -> None:
    system = TorqueSystem("torque-test", torque_cluster.options)
    assert isinstance(system.backend, TorqueCliSystem)
    assert system.backend.command("qsub") == str(Path(torque_cluster.options["bin_dir"], "qsub"))


def test_requirements_reach_the_scheduler(factory: Callable[..., TorqueSystem],
                                          tmp_path: Path) -> None:
    system = factory()
    job = submit(system, make_job(
        tmp_path, ["sh", "-c", 'echo "$SLURM_JOB_CPUS_PER_NODE $PBS_QUEUE $PBS_JOBNAME"'],
        resources=Resources(cores=2, memory_mb=100, walltime_s=120, queue="batch")))
    reports, _ = wait_reports(system, [job])
    assert reports[job.job_id].state == JobState.FINISHED
    assert (job.job_dir / "job.stdout").read_text().split() == ["2", "batch", job.tag]


def test_unknown_queue_message_is_the_schedulers(factory: Callable[..., TorqueSystem],
                                                 tmp_path: Path) -> None:
    with pytest.raises(SubmissionRejected, match="Invalid partition name specified"):
        factory().run(make_job(tmp_path, ["true"], resources=Resources(queue="nosuch")))
