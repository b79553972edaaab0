"""Outputs lists are bounded: at most MAX_OUTPUTS entries, then one saying there were more."""

from __future__ import annotations

from pathlib import Path

from execution_engine.apps.outputs import MAX_OUTPUTS, app_outputs, bounded_outputs
from execution_engine.apps.outputs import job_outputs as list_outputs

TRUNCATED = {"path": "...", "size": None, "truncated": True}


def test_a_list_of_exactly_the_limit_is_whole_and_a_longer_one_is_cut_and_marked() -> None:
    entries = [{"path": str(i), "size": i} for i in range(MAX_OUTPUTS + 5)]
    assert bounded_outputs(entries[:MAX_OUTPUTS]) == entries[:MAX_OUTPUTS]
    assert bounded_outputs(entries) == [*entries[:MAX_OUTPUTS], TRUNCATED]


def test_job_directories_with_more_files_than_the_limit(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    (job_dir / ".execd").mkdir(parents=True)
    (job_dir / ".execd" / "exit_code").write_text("0\n")
    for i in range(MAX_OUTPUTS):
        (job_dir / f"out-{i:05d}.txt").write_text("x")
    listed = list_outputs(job_dir)
    assert len(listed) == MAX_OUTPUTS and TRUNCATED not in listed
    assert listed[0] == {"path": "out-00000.txt", "size": 1}
    assert len(app_outputs(job_dir, ["*.txt"])) == MAX_OUTPUTS

    (job_dir / "one-more.txt").write_text("y")
    for listed in (list_outputs(job_dir), app_outputs(job_dir, ["*.txt"])):
        assert len(listed) == MAX_OUTPUTS + 1 and listed[-1] == TRUNCATED
