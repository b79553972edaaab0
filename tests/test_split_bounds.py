"""Splitters are bounded and say which field is wrong; the lines splitter leaves nothing behind."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import BinaryIO

import pytest

from execution_engine.apps import split
from execution_engine.apps.definition import AppDefinition, load_definition
from execution_engine.apps.inputs import FileValue, check_inputs
from execution_engine.apps.split import (
    MAX_SUBJOBS,
    SplitError,
    Splitter,
    files_of,
    range_length,
    split_values,
    write_chunks,
)
from execution_engine.safefs import UnsafePathError

APPS = Path(__file__).parent / "apps"


@pytest.fixture(scope="module")
def square() -> AppDefinition:
    return load_definition(APPS / "square")


@pytest.fixture(scope="module")
def linecount() -> AppDefinition:
    return load_definition(APPS / "linecount")


def test_range_length_agrees_with_python_range() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        start, stop = rng.randint(-50, 50), rng.randint(-50, 50)
        step = rng.choice([-7, -3, -2, -1, 1, 2, 3, 7])
        assert range_length(start, stop, step) == len(range(start, stop, step))


@pytest.mark.parametrize(("argument", "expected"), [
    ([-2**63, 2**63 - 1], f"splitter.range: gives {2**64 - 1} subjobs, more than "
                          f"{MAX_SUBJOBS}"),
    ([0, 10**30, 1], "splitter.range: gives"),
    ([0, 10, 0], "splitter.range: step is 0"),
    ([0, "x"], "splitter.range: 'x' is not an integer"),
    ([0, 1.5], "splitter.range: 1.5 is not an integer"),
    ([0, True], "splitter.range: True is not an integer"),
    ([0], "splitter.range: not a list"),
    ("0-9", "splitter.range: not a list"),
    ([5, 0], "splitter: gives no subjobs"),
])
def test_a_bad_range_ends_with_a_message_naming_the_field(
        square: AppDefinition, argument: object, expected: str) -> None:
    values, problems = split_values(square, Splitter("n", "range", argument))
    assert values == [] and any(expected in p for p in problems), problems


def test_whole_floats_are_accepted_in_a_range(square: AppDefinition) -> None:
    values, problems = split_values(square, Splitter("n", "range", [0.0, 3.0]))
    assert (values, problems) == ([0, 1, 2], [])


def test_values_that_are_not_a_list_are_refused(square: AppDefinition) -> None:
    assert split_values(square, Splitter("n", "values", "123"))[1] == \
        ["splitter.values: not a list of values"]


def test_a_nul_in_a_file_path_names_the_input(linecount: AppDefinition) -> None:
    checked = check_inputs(linecount, [{"name": "text", "path": "/tmp/a\0b"}])
    assert checked.problems == ["input 'text': path holds a NUL character"]


def lines_file(tmp_path: Path, count: int) -> FileValue:
    path = tmp_path / "data.txt"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(count)))
    return FileValue(path, "data.txt", "COPY")


def test_too_many_chunks_write_nothing(tmp_path: Path) -> None:
    master = tmp_path / "master"
    master.mkdir()
    with pytest.raises(SplitError, match=r"splitter\.lines: .* gives 10001 chunks of 1 lines, "
                                         r"more than 10000"):
        write_chunks(lines_file(tmp_path, MAX_SUBJOBS + 1), 1, master)
    assert not (master / "split").exists() or list((master / "split").iterdir()) == []
    chunks = write_chunks(lines_file(tmp_path, MAX_SUBJOBS), 1, master)
    assert len(chunks) == MAX_SUBJOBS and chunks[-1].source.read_text() == f"{MAX_SUBJOBS - 1}\n"


def test_chunks_written_before_a_failure_are_removed(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    master = tmp_path / "master"
    master.mkdir()
    real = split._write_chunk
    calls = []

    def failing(folder: int, name: str, src: BinaryIO, lines: int) -> bool:
        calls.append(name)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real(folder, name, src, lines)

    monkeypatch.setattr(split, "_write_chunk", failing)
    with pytest.raises(OSError, match="No space left"):
        write_chunks(lines_file(tmp_path, 100), 10, master)
    assert list((master / "split").iterdir()) == []


def test_chunks_are_cut_as_before(tmp_path: Path) -> None:
    master = tmp_path / "master"
    master.mkdir()
    chunks = write_chunks(lines_file(tmp_path, 10), 3, master)
    assert [c.source.read_text().split() for c in chunks] == \
        [["0", "1", "2"], ["3", "4", "5"], ["6", "7", "8"], ["9"]]
    assert {c.target for c in chunks} == {"data.txt"} and {c.action for c in chunks} == {"LINK"}
    assert [p.name for p in sorted((master / "split").iterdir())] == \
        [f"data.txt.{i}" for i in range(4)]


def test_a_link_planted_as_the_chunk_folder_is_refused(tmp_path: Path) -> None:
    master = tmp_path / "master"
    outside = tmp_path / "outside"
    master.mkdir()
    outside.mkdir()
    (master / "split").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="split is a symbolic link"):
        write_chunks(lines_file(tmp_path, 10), 3, master)
    assert list(outside.iterdir()) == []


def test_splitting_by_files_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b", "a", ".hidden", "c"):
        (folder / name).write_text(name)
    (folder / "sub").mkdir()
    (folder / "link").symlink_to(folder / "a")
    source = FileValue(folder, "folder", "LINK")
    assert [f.target for f in files_of(folder, source)] == ["a", "b", "c"]
    monkeypatch.setattr(split, "MAX_SUBJOBS", 2)
    with pytest.raises(SplitError, match=r"splitter\.files: .* more than 2 files"):
        files_of(folder, source)


def test_a_fifo_given_to_split_by_lines_is_refused_without_hanging(tmp_path: Path) -> None:
    master = tmp_path / "master"
    master.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SplitError, match=r"splitter\.lines: .*fifo is not a regular file"):
        write_chunks(FileValue(fifo, "fifo", "COPY"), 3, master)


@pytest.mark.parametrize(("data", "lines", "expected"), [
    (b"", 2, []), (b"a", 2, [b"a"]), (b"a\n", 1, [b"a\n"]), (b"a\nb", 1, [b"a\n", b"b"]),
    (b"a\nb\nc\n", 2, [b"a\nb\n", b"c\n"]), (b"\n\n\n", 3, [b"\n\n\n"]),
])
def test_chunk_edges(tmp_path: Path, data: bytes, lines: int, expected: list[bytes]) -> None:
    master = tmp_path / "master"
    master.mkdir()
    source = tmp_path / "data.txt"
    source.write_bytes(data)
    chunks = write_chunks(FileValue(source, "data.txt"), lines, master)
    assert [c.source.read_bytes() for c in chunks] == expected
    assert [p.name for p in (master / "split").iterdir() if p.name.startswith(".")] == []


def test_a_line_longer_than_a_block_is_copied_whole(tmp_path: Path) -> None:
    master = tmp_path / "master"
    master.mkdir()
    source = tmp_path / "long.txt"
    long_line = b"x" * (3 * (1 << 20) + 5) + b"\n"
    source.write_bytes(long_line + b"short\n" + long_line)
    chunks = write_chunks(FileValue(source, "long.txt"), 2, master)
    assert [c.source.read_bytes() for c in chunks] == [long_line + b"short\n", long_line]
