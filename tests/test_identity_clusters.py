"""Jobs submitted as their owners' accounts to the real clusters, through a running daemon:
Slurm, Torque (Slurm's Torque wrappers) and Grid Engine (``qsub`` run as the account: DRMAA
has no user switch) record the account as the job's user, the job runs with the account's
uid, and the engine still follows and cancels it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from execution_engine.identity import Account
from execution_engine.states import JobState
from execution_engine.systems.base import ExecutionSystem
from execution_engine.systems.ogs import OgsSystem
from execution_engine.systems.slurm import SlurmSystem
from execution_engine.systems.torque import TorqueSystem
from tests.cluster_helpers import (
    Cluster,
    make_job,
    sge_cluster,
    slurm_cluster,
    torque_cluster,
    wait_reports,
)
from tests.conftest import Engine
from tests.support.accounts import LocalAccounts, write_map

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

__all__ = ["sge_cluster", "slurm_cluster", "torque_cluster"]  # fixtures used by name

ALICE = "alice@test.example"
BOB = "bob@test.example"


def scheduler_user(kind: str, native_id: str, cluster: Cluster) -> str:
    """The job's user as the scheduler's own records show it: its listing (``squeue``,
    ``qstat``), or, for a Grid Engine job that has ended, its accounting (``qacct``, written
    every 15 s or so)."""
    if kind == "slurm":
        return _run(["squeue", "-h", "-t", "all", "-j", native_id, "-o", "%u"]).strip()
    if kind == "torque":
        out = _run([str(Path(cluster.options["bin_dir"]) / "qstat"), "-f", native_id])
        owner = next(line for line in out.splitlines() if "Job_Owner" in line)
        return owner.split("=", 1)[1].strip().split("@")[0]
    deadline = time.monotonic() + 60
    while True:
        for argv in (["qstat", "-j", native_id], ["qacct", "-j", native_id]):
            found = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                   check=False)
            for line in found.stdout.splitlines():
                if line.startswith("owner"):
                    return line.split(None, 1)[1].strip().lstrip(":").strip()
        assert time.monotonic() < deadline, f"Grid Engine does not know job {native_id}"
        time.sleep(1)


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture
def owners(local_accounts: LocalAccounts, tmp_path: Path) -> tuple[Account, Account, Path]:
    """Alice's and Bob's accounts, and the map file mapping them."""
    a, b = local_accounts.account("a"), local_accounts.account("b")
    map_file = tmp_path / "owners.map"
    write_map(map_file, {ALICE: a.name, BOB: b.name})
    return a, b, map_file


@pytest.mark.parametrize("kind", ["slurm", "torque", "ogs"])
def test_jobs_are_submitted_as_their_owners_accounts(
        kind: str, request: pytest.FixtureRequest, engine_factory: Callable[..., Engine],
        owners: tuple[Account, Account, Path], open_jobs_dir: Path) -> None:
    cluster: Cluster = request.getfixturevalue(f"{'sge' if kind == 'ogs' else kind}_cluster")
    a, b, map_file = owners
    options = "".join(f"{key} = {value}\n" for key, value in cluster.options.items() if value)
    daemon = engine_factory(
        f"[identity]\nmapping = map\nmap_file = {map_file}\n\n"
        f"[systems]\n[[cluster]]\nclass = {kind}\nstatus_interval = 1\n{options}",
        jobs_dir=open_jobs_dir)
    alices = daemon.submit("sh", "-c", "id -u", owner=ALICE, notify=False)
    bobs = daemon.submit("sh", "-c", "id -u; sleep 600", owner=BOB, notify=False)
    (alice_doc,) = daemon.wait_ended([alices], timeout=120)
    assert alice_doc["state"] == "finished", alice_doc.get("status_message")
    assert Path(alice_doc["job_dir"], "job.stdout").read_text().split() == [str(a.uid)]
    assert scheduler_user(kind, alice_doc["native_id"], cluster) == a.name
    assert Path(alice_doc["job_dir"]).stat().st_uid == a.uid

    # Bob's job runs as Bob at the scheduler, and the engine (root) still cancels it.
    daemon.wait_for(lambda: (daemon.store.get(bobs) or {}).get("state") == "running",
                    timeout=120, what="Bob's job to run")
    running: dict[str, Any] = daemon.store.get(bobs) or {}
    assert scheduler_user(kind, running["native_id"], cluster) == b.name
    daemon.store.request_cancel(bobs)
    (bob_doc,) = daemon.wait_ended([bobs], timeout=120)
    assert (bob_doc["state"], bob_doc["reason"]) == ("killed", "cancelled"), bob_doc


SYSTEMS: dict[str, type[ExecutionSystem]] = {"slurm": SlurmSystem, "torque": TorqueSystem,
                                             "ogs": OgsSystem}


@pytest.mark.parametrize("kind", ["slurm", "torque", "ogs"])
def test_a_job_submitted_as_an_account_is_found_by_its_tag(
        kind: str, request: pytest.FixtureRequest, owners: tuple[Account, Account, Path],
        open_jobs_dir: Path) -> None:
    """What crash recovery asks (a submission in doubt is looked up by its tag before it is
    made again): the scheduler's job of another account is found all the same; and root holds
    and releases it (Slurm suspends a running job: the other systems' holds go through the
    same root commands or DRMAA session as their kills, tested through the daemon above)."""
    cluster: Cluster = request.getfixturevalue(f"{'sge' if kind == 'ogs' else kind}_cluster")
    account = owners[0]
    system = SYSTEMS[kind](f"find-{kind}", cluster.options)
    job = make_job(open_jobs_dir, ["sleep", "60"])
    for path in (job.job_dir, job.job_dir / ".execd", job.script):
        os.chown(path, account.uid, account.gid)
    spec = replace(job, account=account)
    native_id = system.run(spec).native_id
    try:
        assert system.find(spec) == native_id
        assert scheduler_user(kind, native_id, cluster) == account.name
        if kind == "slurm":  # root suspends and resumes the account's running job
            submitted = replace(spec, native_id=native_id)
            wait_reports(system, [submitted], lambda r: r.state is JobState.RUNNING)
            system.hold(submitted)
            wait_reports(system, [submitted], lambda r: r.state is JobState.HOLD)
            system.release(submitted)
            wait_reports(system, [submitted], lambda r: r.state is JobState.RUNNING)
    finally:
        subprocess.run(["qdel" if kind == "ogs" else "scancel", native_id], timeout=60,
                       check=False, capture_output=True)
        system.close()
