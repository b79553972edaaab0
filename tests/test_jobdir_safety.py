"""Job directories, scripts and staged inputs are made without following a planted link."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from execution_engine.apps.staging import StagingError, stage
from execution_engine.jobscript import UnsafePathError, make_job_dir, write_script
from execution_engine.safefs import open_file, write_file
from tests.conftest import Engine


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    return jobs


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def everything_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def test_a_job_directory_and_its_engine_folder_are_made_and_made_again(jobs_dir: Path) -> None:
    job_dir = jobs_dir / "proj" / "j1"
    make_job_dir(job_dir, jobs_dir)
    make_job_dir(job_dir, jobs_dir)  # a rebuild finds them made
    assert (job_dir / ".execd").is_dir()
    write_script(job_dir / ".execd" / "job.sh", "#!/bin/sh\necho one\n", jobs_dir)
    write_script(job_dir / ".execd" / "job.sh", "#!/bin/sh\n", jobs_dir)
    script = job_dir / ".execd" / "job.sh"
    assert script.read_text() == "#!/bin/sh\n" and os.access(script, os.X_OK)
    make_job_dir(job_dir, jobs_dir, script="#!/bin/sh\necho two\n")  # made and written at once
    assert script.read_text() == "#!/bin/sh\necho two\n" and os.access(script, os.X_OK)
    # The default root is the grandparent, as in <jobs_dir>/<project>/<id>.
    make_job_dir(jobs_dir / "other" / "j2")
    assert (jobs_dir / "other" / "j2" / ".execd").is_dir()


def test_the_jobs_directory_is_made_when_missing(tmp_path: Path) -> None:
    jobs = tmp_path / "state" / "jobs"
    make_job_dir(jobs / "default" / "j1", jobs)
    assert (jobs / "default" / "j1" / ".execd").is_dir()


@pytest.mark.parametrize("planted", ["proj", "proj/j1", "proj/j1/.execd"])
def test_a_link_planted_at_any_component_fails_the_build_naming_it(
        jobs_dir: Path, outside: Path, planted: str) -> None:
    job_dir = jobs_dir / "proj" / "j1"
    parent = (jobs_dir / planted).parent
    parent.mkdir(parents=True, exist_ok=True)
    (jobs_dir / planted).symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError) as caught:
        make_job_dir(job_dir, jobs_dir)
    assert str(caught.value).startswith(f"{jobs_dir / planted} is a symbolic link")
    assert isinstance(caught.value, OSError)  # builders end the job with its message
    assert everything_in(outside) == []


def test_a_dangling_link_or_a_file_where_a_folder_goes_is_refused(
        jobs_dir: Path, outside: Path) -> None:
    (jobs_dir / "proj").mkdir()
    (jobs_dir / "proj" / "j1").symlink_to(outside / "not-yet")
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        make_job_dir(jobs_dir / "proj" / "j1", jobs_dir)
    assert not (outside / "not-yet").exists()
    (jobs_dir / "proj" / "j2").write_text("a file")
    with pytest.raises(UnsafePathError, match=r"proj/j2 is not a directory"):
        make_job_dir(jobs_dir / "proj" / "j2", jobs_dir)


def test_a_script_is_never_written_through_a_link_or_a_hard_link(
        jobs_dir: Path, outside: Path) -> None:
    job_dir = jobs_dir / "proj" / "j1"
    make_job_dir(job_dir, jobs_dir)
    victim = outside / "victim"
    victim.write_text("untouched")
    script = job_dir / ".execd" / "job.sh"
    script.symlink_to(victim)
    with pytest.raises(UnsafePathError, match=r"job\.sh is a symbolic link"):
        write_script(script, "#!/bin/sh\n", jobs_dir)
    with pytest.raises(UnsafePathError, match=r"job\.sh is a symbolic link"):
        write_script(script, "#!/bin/sh\n")  # without a root: the name itself still is not
    with pytest.raises(UnsafePathError, match=r"job\.sh is a symbolic link"):
        make_job_dir(job_dir, jobs_dir, script="#!/bin/sh\n")  # as the builder writes it
    script.unlink()
    os.link(victim, script)
    with pytest.raises(UnsafePathError, match="has other hard links"):
        write_script(script, "#!/bin/sh\n", jobs_dir)
    assert victim.read_text() == "untouched"
    script.unlink()
    os.mkfifo(script)
    with pytest.raises(UnsafePathError, match="is not a regular file"):
        write_script(script, "#!/bin/sh\n", jobs_dir)


def test_a_script_is_never_written_through_a_linked_engine_folder(
        jobs_dir: Path, outside: Path) -> None:
    job_dir = jobs_dir / "proj" / "j1"
    make_job_dir(job_dir, jobs_dir)
    (job_dir / ".execd").rmdir()
    (job_dir / ".execd").symlink_to(outside)  # swapped in after the directory was made
    with pytest.raises(UnsafePathError, match=r"\.execd is a symbolic link"):
        write_script(job_dir / ".execd" / "job.sh", "#!/bin/sh\n", jobs_dir)
    assert everything_in(outside) == []


def test_reading_and_writing_below_a_root_refuse_links_on_the_way(
        tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (outside / "f").write_text("secret")
    (root / "in").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="in is a symbolic link"):
        open_file(root, "in/f")
    with pytest.raises(UnsafePathError, match="in is a symbolic link"):
        write_file(root, "in/f", b"x")
    with pytest.raises(ValueError, match="components"):
        open_file(root, "a/../f")
    assert (outside / "f").read_text() == "secret"


def test_staging_never_goes_through_a_link_in_a_deeper_folder(
        tmp_path: Path, outside: Path) -> None:
    job_dir = tmp_path / "job"
    (job_dir / "a").mkdir(parents=True)
    (job_dir / "a" / "b").symlink_to(outside)
    source = tmp_path / "in.txt"
    source.write_text("data")
    with pytest.raises(StagingError, match="a/b in the job directory is a symbolic link"):
        stage(source, job_dir, "a/b/c/in.txt", "COPY")
    (job_dir / "a" / "f").write_text("")
    with pytest.raises(StagingError, match="a/f in the job directory is not a directory"):
        stage(source, job_dir, "a/f/in.txt", "LINK")
    assert everything_in(outside) == []
    assert not [p for p in job_dir.rglob("*") if ".staging" in p.name]


def test_a_planted_link_ends_the_job_in_error_and_nothing_is_written_outside(
        engine_factory: Callable[..., Engine], outside: Path) -> None:
    engine = engine_factory("[systems]\n[[local]]\nclass = local\nslots = 2\n")
    engine.jobs_dir.mkdir(parents=True, exist_ok=True)
    (engine.jobs_dir / "evil").symlink_to(outside, target_is_directory=True)
    (engine.jobs_dir / "default").mkdir(exist_ok=True)
    (engine.jobs_dir / "default" / "planted").symlink_to(outside, target_is_directory=True)
    by_project = engine.submit("true", project="evil")
    by_id = engine.insert({"_id": "planted", "state": "to be built", "command": ["true"]})
    good = engine.submit("true")
    docs = {d["_id"]: d for d in engine.wait_ended([by_project, by_id, good])}
    assert docs[good]["state"] == "finished"
    for job_id, planted in ((by_project, engine.jobs_dir / "evil"),
                            (by_id, engine.jobs_dir / "default" / "planted")):
        assert docs[job_id]["state"] == "error"
        assert f"{planted} is a symbolic link" in docs[job_id]["status_message"]
    assert everything_in(outside) == []


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                    reason="giving a folder to another account needs root")
def test_a_job_directory_can_be_given_to_the_job_account(jobs_dir: Path) -> None:
    job_dir = jobs_dir / "proj" / "j1"
    make_job_dir(job_dir, jobs_dir, mode=0o700, owner=(65534, 65534))
    for folder in (job_dir, job_dir / ".execd"):
        info = folder.lstat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (65534, 65534, 0o700)
    assert (jobs_dir / "proj").lstat().st_uid == os.geteuid()  # the engine's still


def test_a_fifo_swapped_in_as_a_source_is_refused_without_hanging(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    source = tmp_path / "in.txt"
    os.mkfifo(source)
    with pytest.raises(StagingError, match="is not a regular file"):
        stage(source, job_dir, "in.txt", "COPY")
    assert [p.name for p in job_dir.iterdir()] == []
