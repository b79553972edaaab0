"""The Slurm execution system against a real one-host Slurm cluster."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from execution_engine.errors import SubmissionRejected
from execution_engine.states import JobState
from execution_engine.systems.base import Resources
from execution_engine.systems.slurm import SlurmSystem
from tests.cluster_helpers import (
    Cluster,
    ClusterContract,
    make_job,
    slurm_cluster,
    submit,
    wait_reports,
)

pytestmark = pytest.mark.cluster

__all__ = ["slurm_cluster"]  # a fixture used by name


@pytest.fixture
def cluster(slurm_cluster: Cluster) -> Cluster:
    return slurm_cluster


@pytest.fixture
def factory(slurm_cluster: Cluster) -> Iterator[Callable[..., SlurmSystem]]:
    systems: list[SlurmSystem] = []

    def make(**overrides: Any) -> SlurmSystem:
        system = SlurmSystem("slurm-test", {**slurm_cluster.options, **overrides})
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.close()


class TestSlurmContract(ClusterContract):
    # EnforcePartLimits=ALL: impossible requests are refused by sbatch.
    impossible = Resources(cores=4096)
    refusal_words = "More processors requested than permitted"


def test_impossible_memory_is_rejected(factory: Callable[..., SlurmSystem],
                                       tmp_path: Path) -> None:
    with pytest.raises(SubmissionRejected, match="Requested node configuration is not available"):
        factory().run(make_job(tmp_path, ["true"], resources=Resources(memory_mb=10**9)))


def test_requirements_reach_slurm(factory: Callable[..., SlurmSystem], tmp_path: Path) -> None:
    system = factory()
    job = submit(system, make_job(
        tmp_path, ["sh", "-c", 'echo "$SLURM_CPUS_PER_TASK $SLURM_JOB_PARTITION $SLURM_JOB_NAME"'],
        resources=Resources(cores=2, memory_mb=100, walltime_s=90, queue="batch")))
    reports, _ = wait_reports(system, [job])
    assert reports[job.job_id].state == JobState.FINISHED
    assert (job.job_dir / "job.stdout").read_text().split() == ["2", "batch", job.tag]
    limit = subprocess.run(["squeue", "-h", "-t", "all", "-j", job.native_id or "", "-o", "%l"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert limit == "2:00"  # 90 s, rounded up to minutes by Slurm


def test_one_unknown_id_alone_is_a_forgotten_job_not_an_outage(
        factory: Callable[..., SlurmSystem], tmp_path: Path) -> None:
    """squeue exits 1 for a single unknown id (and 0 for several): the job is over."""
    job = replace(make_job(tmp_path, ["true"]), native_id="999999999")
    job.exit_code_file.write_text("0\n")
    assert factory().get_statuses([job])[job.job_id].state == JobState.FINISHED


def test_purged_job_without_exit_code_is_explained_by_accounting(
        factory: Callable[..., SlurmSystem], tmp_path: Path) -> None:
    system = factory()
    job = submit(system, make_job(tmp_path, ["sleep", "300"]))
    wait_reports(system, [job], lambda r: r.state == JobState.RUNNING)
    system.kill(job, force=True)
    wait_reports(system, [job])
    job.exit_code_file.unlink(missing_ok=True)  # as if the script never recorded it
    report = system.resolve_missing([job])[job.job_id]
    assert report.state == JobState.KILLED  # by the engine's kill, which Slurm's words confirm
    assert "Slurm accounting: state CANCELLED" in report.message, report
