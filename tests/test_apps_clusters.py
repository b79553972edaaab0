"""An application job with every input type, all three phases and an environment snippet, run
through the daemon on each real cluster system: outputs checksummed, fetched and verified."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster_helpers import sge_cluster, slurm_cluster, torque_cluster  # noqa: F401
from tests.conftest import Engine
from tests.test_apps_e2e import add_app, alltypes_inputs, app_job, sha256, text  # noqa: F401
from tests.test_engine_clusters import Target, daemon, target  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_every_input_type_runs_on_a_cluster_with_outputs_fetched_and_verified(
        daemon: Engine, target: Target, text: Path, tmp_path: Path) -> None:  # noqa: F811
    add_app(daemon, "alltypes")
    job = app_job(daemon, "alltypes", alltypes_inputs(text), owner="alice", project="apps")
    (doc,) = daemon.wait_ended([job], timeout=240)
    assert doc["state"] == "finished", doc.get("status_message")
    assert doc["system"] == target.name
    job_dir = Path(doc["job_dir"])
    staged = job_dir / "input text.txt"
    records = (job_dir / "values.bin").read_bytes().split(b"\0")[:-1]
    assert [r.decode() for r in records] == ["3", "0.25", "A title", "a note", "XY42", "true",
                                             "very slow", str(staged)]
    # No snippet of its own for this system: the default one was forged in.
    assert (job_dir / "execute.stdout").read_text() == \
        "verbose mode\nsite=default home=/opt/alltypes\n"
    assert f"system={target.name}" in (job_dir / "summary.txt").read_text()
    for phase in ("prolog", "execute", "epilog"):
        assert (job_dir / ".execd" / f"{phase}.exit_code").read_text() == "0\n"
    for output in doc["outputs"]:
        assert output["sha256"] == sha256(job_dir / output["path"])
    dest = tmp_path / "fetched"
    out = daemon.cli("fetch", str(job), str(dest), "--mark").stdout
    assert f"fetched 5 of 5 outputs of job {job}" in out
    for output in doc["outputs"]:
        assert (dest / output["path"]).read_bytes() == (job_dir / output["path"]).read_bytes()
