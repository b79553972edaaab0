"""Typed inputs, staging and forging, without a daemon: every bad input named, no escape, no
injection."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from execution_engine.apps.definition import AppDefinition, load_definition
from execution_engine.apps.forge import ForgeError, forge_body
from execution_engine.apps.inputs import FileValue, as_text, check_inputs, source_problem
from execution_engine.apps.markup import ENGINE_MARKUPS
from execution_engine.apps.staging import StagingError, stage, target_problem
from execution_engine.jobscript import forge_script

APPS = Path(__file__).parent / "apps"
NASTY = ["; rm -rf /tmp/execd-pwned", "$(touch /tmp/execd-pwned)", "`touch /tmp/execd-pwned`",
         "line one\nline two", "it's 'quoted'", 'say "hi"', "$HOME", "*", "a\\b", "@@JOB_ID@@",
         "&& echo no", "| cat", "> /tmp/execd-redirect", "#comment", "\ttab", " "]


@pytest.fixture(scope="module")
def app() -> AppDefinition:
    return load_definition(APPS / "alltypes")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\nthree\n")
    return path


def good_inputs(text_file: Path) -> list[dict[str, Any]]:
    return [{"name": "count", "type": "int", "value": 3},
            {"name": "title", "type": "string", "value": "hello"},
            {"name": "text", "type": "file", "path": str(text_file), "action": "COPY"}]


def test_good_inputs_are_typed_and_defaults_fill_in(app: AppDefinition, text_file: Path
                                                   ) -> None:
    checked = check_inputs(app, [*good_inputs(text_file)[1:],
                                 {"name": "count", "value": "7"},
                                 {"name": "ratio", "value": "0.25"},
                                 {"name": "verbose", "value": "yes"}])
    assert checked.problems == []
    assert checked.values == {
        "count": 7, "ratio": 0.25, "title": "hello", "note": "", "code": "AB1",
        "verbose": True, "mode": "fast", "text": FileValue(text_file, "in.txt", "COPY")}
    assert [as_text(checked.values[k]) for k in ("count", "ratio", "verbose", "note")] == \
        ["7", "0.25", "true", ""]


def test_every_invalid_input_is_named_in_one_go(app: AppDefinition, tmp_path: Path) -> None:
    folder = tmp_path / "a-directory"
    folder.mkdir()
    checked = check_inputs(app, [
        {"name": "count", "value": 0},                      # below min
        {"name": "ratio", "value": "lots"},                 # not a number
        {"name": "code", "value": "abc"},                   # regex
        {"name": "verbose", "value": "perhaps"},            # not a boolean
        {"name": "mode", "value": "medium"},                # not a choice
        {"name": "note", "value": 12},                      # not a string
        {"name": "text", "path": "/no/such/file"},          # missing file
        {"name": "colour", "value": "red"},                 # unknown input
        {"name": "count", "value": 5},                      # twice
    ])
    # "title" (required) is missing too.
    expected = [
        "input 'count' (How many lines): 0 is below the minimum 1",
        "input 'ratio': 'lots' is not a number",
        "input 'code': 'abc' does not match",
        "input 'verbose': 'perhaps' is not a boolean",
        "input 'mode': 'medium' is not one of 'fast', 'slow', 'very slow'",
        "input 'note': 12 is not a string",
        "input 'text' (Text to count): /no/such/file does not exist",
        "input 'colour': application alltypes has no such input",
        "input 'count' (How many lines): given more than once",
        "input 'title' (Title): required, not given",
    ]
    for text in expected:
        assert any(text in p for p in checked.problems), (text, checked.problems)
    assert len(checked.problems) == len(expected), checked.problems
    checked = check_inputs(app, [{"name": "count", "value": 101},
                                 {"name": "title", "type": "int", "value": "x"},
                                 {"name": "text", "path": str(folder)}])
    assert any("101 is above the maximum 100" in p for p in checked.problems)
    assert any("given as type 'int', the application declares 'string'" in p
               for p in checked.problems)
    assert any(f"{folder} is not a regular file" in p for p in checked.problems)


@pytest.mark.parametrize(("item", "expected"), [
    ({"name": "text", "path": "relative/in.txt"}, "path 'relative/in.txt' is not absolute"),
    ({"name": "text", "value": "/etc/hosts"}, "a file input gives path (and action), not value"),
    ({"name": "text", "path": "/etc/hosts", "action": "MOVE"}, "action 'MOVE' is not COPY"),
    ({"name": "text", "path": "/dev/null"}, "/dev/null is not a regular file"),
    ({"name": "title", "value": "x", "path": "/etc/hosts"}, "path, action and as are for file"),
    ({"name": "title"}, "no value"),
    ({"name": "title", "value": "a\0b"}, "contains a NUL character"),
    ({"name": "count", "value": True}, "True is not an integer"),
    ({"name": "count", "value": 2.5}, "2.5 is not an integer"),
    ({"name": "ratio", "value": "nan"}, "'nan' is not a finite number"),
])
def test_each_kind_of_bad_input_is_named(app: AppDefinition, item: dict[str, Any],
                                         expected: str) -> None:
    checked = check_inputs(app, [item])
    assert any(expected in p for p in checked.problems), checked.problems


@pytest.mark.parametrize(("target", "reason"), [
    ("../escape.txt", "'..' would escape the job directory"),
    ("a/../../escape.txt", "'..' would escape the job directory"),
    ("/etc/cron.d/escape", "an absolute path would escape the job directory"),
    (".execd/job.sh", "'.execd' is reserved for the engine"),
    ("a//b", "empty or '.' path components"),
    ("", "empty"),
])
def test_file_names_that_would_escape_the_job_directory_are_refused(
        app: AppDefinition, text_file: Path, target: str, reason: str) -> None:
    assert reason in (target_problem(target) or "")
    checked = check_inputs(app, [{"name": "text", "path": str(text_file), "as": target}])
    assert any(f"cannot be staged as {target!r}: {reason}" in p for p in checked.problems)


def test_staging_never_goes_through_a_symbolic_link(tmp_path: Path, text_file: Path) -> None:
    job_dir = tmp_path / "job"
    outside = tmp_path / "outside"
    job_dir.mkdir()
    outside.mkdir()
    (job_dir / "sub").symlink_to(outside)
    with pytest.raises(StagingError, match="sub in the job directory is a symbolic link"):
        stage(text_file, job_dir, "sub/in.txt", "COPY")
    assert list(outside.iterdir()) == []
    # A link already standing where a file goes is replaced, never written through.
    victim = outside / "victim"
    victim.write_text("untouched")
    (job_dir / "in.txt").symlink_to(victim)
    staged = stage(text_file, job_dir, "in.txt", "COPY")
    assert not staged.is_symlink() and staged.read_text() == text_file.read_text()
    assert victim.read_text() == "untouched"


def test_copy_and_link_staging(tmp_path: Path, text_file: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    text_file.chmod(0o640)
    copied = stage(text_file, job_dir, "deep/er/copy.txt", "COPY")
    linked = stage(text_file, job_dir, "link.txt", "LINK")
    assert copied.read_text() == text_file.read_text() and not copied.is_symlink()
    assert copied.stat().st_mode & 0o777 == 0o640
    assert linked.is_symlink() and linked.readlink() == text_file.resolve()
    assert not [p for p in job_dir.rglob("*") if p.name.endswith(".staging")]


def app_inputs(app: AppDefinition) -> list[str]:
    return [spec.name for spec in app.inputs]


def _markups(job_dir: Path, **values: str) -> dict[str, str]:
    engine = dict.fromkeys(ENGINE_MARKUPS, "")
    engine.update(JOB_ID="j1", JOB_DIR=str(job_dir), SYSTEM="local", CORES="1",
                  APP_NAME="alltypes", APP_VERSION="1")
    return {**values, **engine}


def _run_forged(definition: AppDefinition, job_dir: Path, **values: str
                ) -> subprocess.CompletedProcess[bytes]:
    """Forge ``definition``'s job script in a new ``job_dir`` and run it to its end."""
    (job_dir / ".execd").mkdir(parents=True)
    body = forge_body(definition, _markups(job_dir, **values), "local")
    script = job_dir / ".execd" / "job.sh"
    script.write_text(forge_script(job_id="j1", job_dir=str(job_dir), command=(),
                                   environment={}, body=body))
    return subprocess.run(["/bin/sh", str(script)], check=False, timeout=60)


def test_no_value_can_inject_commands_into_the_forged_script(
        app: AppDefinition, tmp_path: Path, text_file: Path) -> None:
    job_dir = tmp_path / "job"
    (job_dir / ".execd").mkdir(parents=True)
    staged = stage(text_file, job_dir, "in.txt", "COPY")
    for nasty in NASTY:
        values = {"count": "1", "ratio": "0.5", "title": nasty, "note": nasty, "code": "AB1",
                  "verbose": "false", "mode": nasty, "text": str(staged)}
        body = forge_body(app, _markups(job_dir, **values), "local")
        script = job_dir / ".execd" / "job.sh"
        script.write_text(forge_script(job_id="j1", job_dir=str(job_dir), command=(),
                                       environment={"PATH": "/usr/bin:/bin"}, body=body))
        result = subprocess.run(["/bin/sh", str(script)], capture_output=True, check=False)
        assert result.returncode == 0, (nasty, (job_dir / "execute.stderr").read_text())
        records = (job_dir / "values.bin").read_bytes().split(b"\0")[:-1]
        assert [r.decode() for r in records] == ["1", "0.5", nasty, nasty, "AB1", "false",
                                                 nasty, str(staged)]
    assert not Path("/tmp/execd-pwned").exists()
    assert not Path("/tmp/execd-redirect").exists()


def test_an_unknown_markup_left_in_a_stored_template_is_a_named_build_error(
        app: AppDefinition, tmp_path: Path) -> None:
    broken = AppDefinition.from_doc({**app.to_doc(), "templates": {
        **app.templates, "epilog": "echo @@JOB_DIR@@\necho @@LEFTOVER@@\n"}})
    with pytest.raises(ForgeError) as info:
        forge_body(broken, _markups(tmp_path, **dict.fromkeys(app_inputs(app), "1")), "local")
    assert info.value.problems == ["template epilog: line 2: unknown markup @@LEFTOVER@@"]


def test_a_failing_phase_stops_the_job_and_is_recorded(app: AppDefinition, tmp_path: Path
                                                       ) -> None:
    failing = AppDefinition.from_doc({**app.to_doc(), "environments": {}, "templates": {
        "prolog": "echo prolog\n", "execute": "echo working; exit 7\n",
        "epilog": "touch epilog-ran\n"}})
    job_dir = tmp_path / "job"
    result = _run_forged(failing, job_dir)
    assert result.returncode == 7
    assert (job_dir / ".execd" / "exit_code").read_text().strip() == "7"
    assert (job_dir / ".execd" / "failed_phase").read_text().strip() == "execute"
    assert (job_dir / ".execd" / "prolog.exit_code").read_text().strip() == "0"
    assert (job_dir / ".execd" / "execute.exit_code").read_text().strip() == "7"
    assert (job_dir / "execute.stdout").read_text() == "working\n"
    assert not (job_dir / "epilog-ran").exists()
    assert not (job_dir / ".execd" / "epilog.exit_code").exists()


def test_a_term_noted_during_a_phase_ends_the_job_before_the_next_one(app: AppDefinition,
                                                                     tmp_path: Path) -> None:
    """A cancel is not lost when it reaches the script but not the phase (a TERM between two
    phases, or to the script alone, as here): the phase ends as it would, and the next one never
    starts."""
    stopped = AppDefinition.from_doc({**app.to_doc(), "environments": {}, "templates": {
        "prolog": 'kill -TERM "$(cat .execd/pid)"\nsleep 0.3\necho prolog done\n',
        "execute": "touch execute-ran\n", "epilog": "touch epilog-ran\n"}})
    job_dir = tmp_path / "job"
    result = _run_forged(stopped, job_dir)
    assert result.returncode == 143
    assert (job_dir / ".execd" / "exit_code").read_text().strip() == "143"
    assert (job_dir / "prolog.stdout").read_text() == "prolog done\n"
    assert (job_dir / ".execd" / "prolog.exit_code").read_text().strip() == "0"
    assert not (job_dir / "execute-ran").exists()
    assert not (job_dir / ".execd" / "execute.exit_code").exists()
    assert not (job_dir / "epilog-ran").exists()


def test_the_phases_run_in_the_job_directory_wherever_the_environment_snippet_went(
        app: AppDefinition, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moving = AppDefinition.from_doc({**app.to_doc(), "environments": {
        "default": f"cd {elsewhere}\nexport FROM_ENV=yes\n"}, "templates": {
        "execute": 'pwd >where.txt\necho "$FROM_ENV" >>where.txt\n'}})
    job_dir = tmp_path / "job"
    result = _run_forged(moving, job_dir)
    assert result.returncode == 0
    assert (job_dir / "where.txt").read_text() == f"{job_dir}\nyes\n"
    assert (job_dir / ".execd" / "environment.exit_code").read_text().strip() == "0"
    assert (job_dir / ".execd" / "exit_code").read_text().strip() == "0"
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(("snippet", "code"), [("false\n", 1), ("exit 0\n", 1), ("exit 5\n", 5),
                                               ("cd /\nexit 6\n", 6)])
def test_a_failing_environment_snippet_stops_the_job(app: AppDefinition, tmp_path: Path,
                                                     snippet: str, code: int) -> None:
    broken = AppDefinition.from_doc({**app.to_doc(), "environments": {"default": snippet}})
    job_dir = tmp_path / "job"
    _run_forged(broken, job_dir, **dict.fromkeys(app_inputs(app), "1"))
    assert (job_dir / ".execd" / "exit_code").read_text().strip() == str(code)
    assert (job_dir / ".execd" / "failed_phase").read_text().strip() == "environment"
    assert not (job_dir / "prolog.stdout").exists()


def test_file_inputs_outside_input_dirs_are_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "uploads"
    allowed.mkdir()
    inside = allowed / "in.txt"
    inside.write_text("x")
    outside = tmp_path / "secret.txt"
    outside.write_text("s")
    sneaky = allowed / "link.txt"
    sneaky.symlink_to(outside)
    assert source_problem(inside, allowed_dirs=[allowed]) is None
    assert "outside the folders" in (source_problem(outside, allowed_dirs=[allowed]) or "")
    assert "outside the folders" in (source_problem(sneaky, allowed_dirs=[allowed]) or "")
    assert source_problem(outside) is None  # no input_dirs: anywhere readable
