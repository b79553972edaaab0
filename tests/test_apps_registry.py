"""Stored application versions on a real mongod."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from execution_engine.apps.definition import load_definition
from execution_engine.apps.registry import AppRegistry, UnknownApp
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
