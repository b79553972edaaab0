"""Application definitions: good folders load; a bad one is refused naming file, field, reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from execution_engine.apps.definition import (
    DefinitionError,
    load_definition,
)
from execution_engine.apps.markup import ENGINE_MARKUPS

APPS = Path(__file__).parent / "apps"


def copy_app(tmp_path: Path, name: str = "alltypes") -> Path:
    folder = tmp_path / name
    shutil.copytree(APPS / name, folder)
    return folder


def refused(folder: Path) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        load_definition(folder)
    return info.value.problems


def test_every_test_application_loads() -> None:
    app = load_definition(APPS / "alltypes")
    assert app.name == "alltypes"
    assert [(i.name, i.type) for i in app.inputs] == [
        ("count", "int"), ("ratio", "float"), ("title", "string"), ("note", "string"),
        ("code", "string"), ("verbose", "bool"), ("mode", "choice"), ("text", "file")]
    count = app.input("count")
    assert count is not None
    assert (count.required, count.minimum, count.maximum) == (True, 1, 100)
    mode = app.input("mode")
    assert mode is not None
    assert mode.choices == ("fast", "slow", "very slow")
    assert mode.default == "fast"
    assert app.outputs == ("values.bin", "summary.txt", "results/*.txt")
    assert list(app.templates) == ["prolog", "execute", "epilog"]
    assert app.environment_for("local") is not None
    assert app.environment_for("local")[0] == "env/local.sh"  # type: ignore[index]
    assert app.environment_for("slurm")[0] == "env/default.sh"  # type: ignore[index]
    assert load_definition(APPS / "square").environment_for("local") is None


def test_digest_is_stable_and_round_trips_through_a_document() -> None:
    from execution_engine.apps.definition import AppDefinition

    app = load_definition(APPS / "alltypes")
    again = AppDefinition.from_doc(app.to_doc())
    assert again == app
    assert again.digest() == app.digest() == load_definition(APPS / "alltypes").digest()


def _edit_ini(folder: Path, old: str, new: str) -> None:
    ini = folder / "app.ini"
    text = ini.read_text()
    assert old in text, old
    ini.write_text(text.replace(old, new, 1))


BAD_INI = [
    ("name = alltypes", "name = 9lives", "app.ini: name: '9lives' is not"),
    ("name = alltypes", "", "app.ini: name: required"),
    ("name = alltypes", "name = alltypes\ncolour = blue", "app.ini: colour: unknown key"),
    ("    min = 1\n    max = 100", "    min = one\n    max = 100",
     "app.ini: inputs.count.min: 'one' is not an integer"),
    ("    min = 1\n    max = 100", "    min = 10\n    max = 5",
     "app.ini: inputs.count: min 10 is above max 5"),
    ("    type = float", "    type = decimal", "app.ini: inputs.ratio.type: 'decimal' is not"),
    ("    default = 0.5", "    default = 2.5", "app.ini: inputs.ratio.default: 2.5 is above"),
    ('    regex = "^[A-Z]{2}[0-9]{1,3}$"', '    regex = "^[A-Z"',
     "app.ini: inputs.code.regex: '^[A-Z' is not a regular expression"),
    ('    regex = "^[A-Z]{2}[0-9]{1,3}$"', "    regex = ^[A-Z]{2}[0-9]{1,3}$",
     "app.ini: inputs.code.regex: holds a comma; put the value in quotes"),
    ("    default = AB1", "    default = ab1", "app.ini: inputs.code.default: 'ab1' does not"),
    ('    choices = fast, slow, "very slow"', "", "app.ini: inputs.mode.choices: required"),
    ("    default = fast", "    default = medium",
     "app.ini: inputs.mode.default: 'medium' is not one of"),
    ("    default = false", "    default = perhaps",
     "app.ini: inputs.verbose.default: 'perhaps' is not a boolean"),
    ("    label = Text to count", "    label = Text to count\n    default = /etc/hosts",
     "app.ini: inputs.text.default: a file input has no default"),
    ("    label = Title", "    label = Title\n    maximum = 3",
     "app.ini: inputs.title.maximum: unknown key"),
    ("    label = Title", "    label = Title\n    min = 3",
     "app.ini: inputs.title.min: only for int and float inputs"),
    ("    [[note]]", "    [[JOB_DIR]]", "app.ini: inputs.JOB_DIR: JOB_DIR is an engine markup"),
    ("outputs = values.bin", "outputs = ../values.bin",
     "app.ini: outputs: pattern '../values.bin': '..' would escape"),
    ("outputs = values.bin", "outputs = /etc/values.bin",
     "app.ini: outputs: pattern '/etc/values.bin': an absolute path"),
    ("[inputs]", "[templates]\nbuild = build.sh\n[inputs]",
     "app.ini: templates.build: unknown phase"),
]


@pytest.mark.parametrize(("old", "new", "expected"), BAD_INI,
                         ids=[case[2].split(":")[1].strip() + "-" + str(i)
                              for i, case in enumerate(BAD_INI)])
def test_a_bad_app_ini_is_refused_naming_file_field_and_reason(
        tmp_path: Path, old: str, new: str, expected: str) -> None:
    folder = copy_app(tmp_path)
    _edit_ini(folder, old, new)
    problems = refused(folder)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = copy_app(tmp_path)
    _edit_ini(folder, "    min = 1\n", "    min = one\n")
    _edit_ini(folder, "    default = fast", "    default = medium")
    (folder / "execute.sh").write_text("echo @@nosuch@@\n")
    (folder / "env" / "notes.txt").write_text("hello\n")
    problems = refused(folder)
    joined = "\n".join(problems)
    for expected in ("inputs.count.min", "inputs.mode.default",
                     "execute.sh: line 1: unknown markup @@nosuch@@", "env/notes.txt"):
        assert expected in joined
    assert len(problems) == 4, problems


@pytest.mark.parametrize(("file", "text", "expected"), [
    ("execute.sh", "echo @@colour@@\n", "execute.sh: line 1: unknown markup @@colour@@"),
    ("prolog.sh", "mkdir x\necho \"@@title@@\"\n",
     "prolog.sh: line 2: @@title@@ is inside quotes"),
    ("epilog.sh", "if true; then\necho no fi\n", "epilog.sh: shell syntax error: line"),
    ("execute.sh", "echo one )\n", "execute.sh: shell syntax error"),
    ("env/default.sh", "export A=@@JOB_DIRR@@\n",
     "env/default.sh: line 1: unknown markup @@JOB_DIRR@@"),
    ("env/my cluster.sh", "true\n", "env/my cluster.sh: 'my cluster' cannot be"),
])
def test_bad_templates_and_snippets_are_refused(tmp_path: Path, file: str, text: str,
                                                expected: str) -> None:
    folder = copy_app(tmp_path)
    (folder / file).write_text(text)
    problems = refused(folder)
    assert any(expected in p for p in problems), problems


def test_the_execute_template_is_required_and_others_are_optional(tmp_path: Path) -> None:
    folder = copy_app(tmp_path)
    (folder / "prolog.sh").unlink()
    (folder / "epilog.sh").unlink()
    assert list(load_definition(folder).templates) == ["execute"]
    (folder / "execute.sh").unlink()
    assert refused(folder) == ["execute.sh: missing (the execute phase is required)"]


def test_a_folder_without_app_ini_or_with_a_broken_one_is_refused(tmp_path: Path) -> None:
    assert refused(tmp_path) == ["app.ini: missing"]
    (tmp_path / "app.ini").write_text("name = x\n[inputs\n")
    problems = refused(tmp_path)
    assert problems[0].startswith("app.ini: ") and "line 2" in problems[0]


def test_every_engine_markup_is_documented() -> None:
    text = (Path(__file__).parent.parent / "docs" / "applications.md").read_text()
    for name in ENGINE_MARKUPS:
        assert f"@@{name}@@" in text
