"""Listing outputs never follows a symbolic link and is bounded in depth and entries."""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from execution_engine.apps.outputs import (
    MAX_OUTPUTS,
    app_outputs,
    failed_phase,
    failed_phase_message,
    fetch_outputs,
    glob_match,
    job_outputs,
)
from execution_engine.safefs import MAX_DEPTH, BoundedWalk

TRUNCATED = {"path": "...", "size": None, "truncated": True}


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    job_dir = tmp_path / "job"
    (job_dir / ".execd").mkdir(parents=True)
    (job_dir / ".execd" / "exit_code").write_text("0\n")
    (job_dir / "job.stdout").write_text("hello\n")
    return job_dir


def test_a_symlink_loop_is_neither_followed_nor_listed(job_dir: Path) -> None:
    (job_dir / "loop").mkdir()
    (job_dir / "loop" / "me").symlink_to(job_dir / "loop")
    (job_dir / "loop" / "out.txt").write_text("x")
    (job_dir / "self").symlink_to(".")
    started = time.monotonic()
    plain = job_outputs(job_dir)
    apps = app_outputs(job_dir, ["**", "**/*.txt", "loop/me/me/*"])
    assert time.monotonic() - started < 5
    assert plain == [{"path": "job.stdout", "size": 6}, {"path": "loop/out.txt", "size": 1}]
    assert [o["path"] for o in apps] == ["job.stdout", "loop/out.txt"]


def test_a_symlink_to_etc_is_never_entered_nor_read(job_dir: Path) -> None:
    (job_dir / "etc").symlink_to("/etc")
    (job_dir / "passwd").symlink_to("/etc/passwd")
    assert job_outputs(job_dir) == [{"path": "job.stdout", "size": 6}]
    listed = app_outputs(job_dir, ["*", "etc/*", "etc/**", "passwd"])
    assert [o["path"] for o in listed] == ["job.stdout"]


def remove_chain(top: Path) -> None:
    """Remove a chain of nested ``d`` folders without recursion (rmtree would recurse once per
    level): lift each level's child into its place."""
    chain = top / "d"
    while chain.is_dir():
        for entry in chain.iterdir():
            if entry.name != "d":
                entry.unlink()
        if (chain / "d").is_dir():
            (chain / "d").rename(top / "lifted")
            chain.rmdir()
            (top / "lifted").rename(chain)
        else:
            chain.rmdir()


@pytest.fixture
def deep_dir(job_dir: Path) -> Iterator[Path]:
    yield job_dir
    remove_chain(job_dir)


def test_a_1000_deep_tree_is_listed_down_to_the_maximum_depth_only(deep_dir: Path) -> None:
    job_dir = deep_dir
    fd = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:  # descriptor-relative: the path itself would pass PATH_MAX
        for _ in range(1000):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.close(leaf)
    finally:
        os.close(fd)
    (job_dir / "d" / "top.txt").write_text("t")
    started = time.monotonic()
    plain = job_outputs(job_dir)
    apps = app_outputs(job_dir, ["**/*.txt"])
    assert time.monotonic() - started < 5
    assert plain == [{"path": "d/top.txt", "size": 1}, {"path": "job.stdout", "size": 6},
                     TRUNCATED]
    assert [o["path"] for o in apps] == ["d/top.txt", TRUNCATED["path"]]
    walk = BoundedWalk(job_dir)
    assert max(e.path.count("/") + 1 for e in walk) == MAX_DEPTH
    assert walk.truncated and "deeper than" in walk.why


def test_a_walk_looks_at_a_bounded_number_of_entries(job_dir: Path) -> None:
    for i in range(50):
        (job_dir / f"f{i:02d}").write_text("")
    walk = BoundedWalk(job_dir, max_scanned=20)
    assert len(list(walk)) <= 20 and walk.truncated
    assert job_outputs(job_dir)[-1] != TRUNCATED  # the default bound is far above 51


def test_plain_outputs_leave_the_engine_folder_out_and_keep_hidden_files(job_dir: Path) -> None:
    (job_dir / ".hidden").write_text("h")
    (job_dir / "sub" / ".execd").mkdir(parents=True)
    (job_dir / "sub" / ".execd" / "x").write_text("xx")
    assert job_outputs(job_dir) == [{"path": ".hidden", "size": 1},
                                    {"path": "job.stdout", "size": 6},
                                    {"path": "sub/.execd/x", "size": 2}]


def test_output_patterns_match_like_the_shell_glob(tmp_path: Path) -> None:
    files = ["a.txt", ".hidden.txt", "b/c.txt", "b/.d/e.txt", "b/f/g.dat", "b/f/h.txt",
             ".x/y.txt", "res-1.csv", "res-22.csv"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    patterns = ["*.txt", "**/*.txt", "**", "b/**", "b/*/*", ".*", "b/.d/*", "res-?.csv",
                "res-[0-9]*.csv", "*/f/*.dat", "**/.d/*.txt", "nothing*", ".x/*"]
    for pattern in patterns:
        expected = sorted(m for m in glob.glob(pattern, root_dir=tmp_path,  # noqa: PTH207
                                               recursive=True)
                          if (tmp_path / m).is_file())
        matched = sorted(f for f in files
                         if glob_match(tuple(pattern.split("/")), tuple(f.split("/"))))
        assert matched == expected, pattern


def test_app_outputs_hash_what_they_list(job_dir: Path) -> None:
    (job_dir / "r.txt").write_bytes(b"result")
    assert app_outputs(job_dir, ["*.txt", "../*", "/etc/passwd"]) == [
        {"path": "r.txt", "size": 6, "sha256": hashlib.sha256(b"result").hexdigest()}]


def test_fetch_never_reads_through_a_link_planted_after_listing(job_dir: Path,
                                                               tmp_path: Path) -> None:
    (job_dir / "sub").mkdir()
    (job_dir / "sub" / "r.txt").write_text("mine")
    listed = app_outputs(job_dir, ["**/*.txt"])
    secret = tmp_path / "secret"
    (secret / "sub").mkdir(parents=True)
    (secret / "sub" / "r.txt").write_text("secret")
    (job_dir / "sub").rename(job_dir / "moved")
    (job_dir / "sub").symlink_to(secret / "sub")  # a folder on the way is a link now
    dest = tmp_path / "dest"
    report = fetch_outputs(job_dir, listed, dest)
    assert report.copied == []
    assert report.problems == ["sub/r.txt: not a regular file of the job directory"]
    assert not (dest / "sub" / "r.txt").exists()


def test_the_limit_holds_with_links_and_folders_around(job_dir: Path) -> None:
    for i in range(MAX_OUTPUTS + 3):
        (job_dir / f"o{i:05d}").write_text("")
    (job_dir / "zz").symlink_to("/")
    listed = job_outputs(job_dir)
    assert len(listed) == MAX_OUTPUTS + 1 and listed[-1] == TRUNCATED


def test_the_failed_phase_is_never_read_through_a_link(job_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:hash:1:\n")
    (job_dir / ".execd" / "failed_phase").symlink_to(secret)
    assert failed_phase(job_dir) is None
    (job_dir / ".execd" / "failed_phase").unlink()
    (job_dir / ".execd" / "failed_phase").write_text("execute\x1b[2J\n" + "x" * 10_000)
    phase = failed_phase(job_dir)
    assert phase is not None and phase.startswith("execute [2J") and len(phase) <= 256
    assert failed_phase_message(job_dir, "exit code 1").startswith("phase execute")
