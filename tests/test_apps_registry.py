"""Stored application versions on a real mongod."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from execution_engine.apps.definition import load_definition
from execution_engine.apps.registry import AppRegistry, InvalidApp, UnknownApp
from execution_engine.store import JobStore

APPS = Path(__file__).parent / "apps"


def test_versions_are_numbered_and_an_identical_add_adds_nothing(store: JobStore,
                                                                 tmp_path: Path) -> None:
    registry = AppRegistry(store.db)
    first, added = registry.add(load_definition(APPS / "square"), source="here")
    assert (first.version, added) == (1, True)
    again, added = registry.add(load_definition(APPS / "square"))
    assert (again.version, added) == (1, False)
    folder = tmp_path / "square"
    shutil.copytree(APPS / "square", folder)
    (folder / "execute.sh").write_text("echo $((@@n@@ + 0)) >square.txt\n")
    second, added = registry.add(load_definition(folder))
    assert (second.version, added) == (2, True)
    assert registry.get("square").version == 2
    assert registry.get("square", 1).definition == load_definition(APPS / "square")
    assert registry.get("square", 1).source == "here"
    assert registry.versions("square") == [1, 2]
    registry.add(load_definition(APPS / "linecount"))
    assert [(r["name"], r["version"], r["versions"]) for r in registry.latest_of_each()] == [
        ("linecount", 1, 1), ("square", 2, 2)]


def test_unknown_applications_and_versions_are_named(store: JobStore) -> None:
    registry = AppRegistry(store.db)
    with pytest.raises(UnknownApp, match="no application 'nothing' is stored"):
        registry.get("nothing")
    registry.add(load_definition(APPS / "square"))
    with pytest.raises(UnknownApp, match=r"'square' has no version 7 \(stored: 1\)"):
        registry.get("square", 7)


# ---------------------------------------------------------------------- through the database
def greet(**changes: object) -> dict[str, object]:
    """A definition document as a client inserts it into ``apps``."""
    definition: dict[str, object] = {
        "name": "greet", "label": "Greet", "outputs": ["greeting.txt"],
        "inputs": [{"name": "who", "type": "string", "required": True},
                   {"name": "times", "type": "int", "default": 2, "min": 1, "max": 9},
                   {"name": "lang", "type": "choice", "choices": ["en", "fr, be"],
                    "default": "en"},
                   {"name": "loud", "type": "bool", "default": False},
                   {"name": "ratio", "type": "float", "default": 0.5, "regex": None}],
        "templates": {"execute": "echo @@who@@ @@times@@ @@lang@@ > greeting.txt\n",
                      "epilog": "cat greeting.txt\n"},
        "environments": {"default": "export GREETING=1\n"},
    }
    definition.update(changes)
    return {"_id": "greet@1", "name": "greet", "version": 1, "definition": definition}


def test_a_definition_inserted_into_the_collection_is_checked_and_used(store: JobStore
                                                                       ) -> None:
    registry = AppRegistry(store.db)
    store.db["apps"].insert_one(greet())
    stored = registry.get("greet")
    assert stored.version == 1 and stored.definition.name == "greet"
    spec = stored.definition.input("times")
    assert spec is not None and spec.default == 2 and spec.maximum == 9
    lang = stored.definition.input("lang")
    assert lang is not None and lang.choices == ("en", "fr, be")
    assert stored.digest == stored.definition.digest()
    assert set(stored.definition.templates) == {"execute", "epilog"}
    (row,) = registry.latest_of_each()
    assert row["valid"] is True and row["problem"] is None and row["label"] == "Greet"
    # Adding the same definition from a folder is the next version, numbered after it.
    added, new = registry.add(load_definition(APPS / "square"))
    assert (added.version, new) == (1, True)


@pytest.mark.parametrize(("document", "problem"), [
    ({**greet(), "_id": "greet"}, "_id: 'greet' is not 'greet@1'"),
    ({**greet(), "version": "1"}, "version: '1' is not an integer >= 1"),
    ({**greet(), "definition": "echo hi"}, "definition: required, an object"),
    (greet(name="other"), "definition.name: 'other' is not the document's name 'greet'"),
    (greet(colour="blue"), "definition.colour: unknown key"),
    (greet(templates={"epilog": "true\n"}), "definition.templates.execute: required"),
    (greet(templates={"execute": "echo @@nobody@@\n"}),
     "definition.templates.execute: line 1: unknown markup @@nobody@@"),
    (greet(templates={"execute": "if true; then\n"}),
     "definition.templates.execute: shell syntax error"),
    (greet(templates={"execute": "true\n", "cleanup": "true\n"}),
     "definition.templates.cleanup: not a phase"),
    (greet(environments={"../../etc/x": "true\n"}),
     "definition.environments.../../etc/x: not an execution system name"),
    (greet(inputs=[{"name": "n", "type": "int", "min": 5, "max": 1}]),
     "definition.inputs.n: min 5 is above max 1"),
    (greet(inputs=[{"name": "n", "type": "integer"}]),
     "definition.inputs.n.type: 'integer' is not one of"),
    (greet(inputs=[{"name": "n", "type": "int", "default": {"$gt": 1}}]),
     "definition.inputs.n.default: not a single value"),
    (greet(inputs=[{"name": "bad name", "type": "int"}]),
     "definition.inputs[0].name: 'bad name' is not a letter"),
    (greet(outputs=["../escape.txt"]), "definition.outputs: pattern '../escape.txt'"),
])
def test_an_invalid_definition_in_the_collection_is_refused_naming_why(
        store: JobStore, document: dict[str, object], problem: str,
        caplog: pytest.LogCaptureFixture) -> None:
    registry = AppRegistry(store.db)
    store.db["apps"].insert_one(document)
    with pytest.raises(InvalidApp) as raised:
        registry.get("greet")
    assert problem in str(raised.value)
    assert "application 'greet'" in str(raised.value)
    assert any(problem in record.getMessage() for record in caplog.records)
    (row,) = registry.latest_of_each()
    assert row["valid"] is False and problem in row["problem"]
    assert isinstance(raised.value, UnknownApp)  # refused wherever an unknown app is
