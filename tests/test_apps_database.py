"""Applications registered by inserting their definition into the ``apps`` collection, with a
running daemon: a valid one runs, an invalid one is reported and its jobs end in error."""

from __future__ import annotations

from typing import Any

from tests.conftest import Engine


def definition(execute: str) -> dict[str, Any]:
    return {"name": "hello", "label": "Say hello", "outputs": ["hello.txt"],
            "inputs": [{"name": "who", "type": "string", "required": True}],
            "templates": {"execute": execute}}


def app_job(engine: Engine, **app: Any) -> Any:
    return engine.insert({"state": "to be built", "app": {"name": "hello", **app},
                          "inputs": [{"name": "who", "value": "Ada"}], "notify": False})


def test_an_application_inserted_into_the_database_runs(engine: Engine) -> None:
    engine.store.db["apps"].insert_one({"_id": "hello@1", "name": "hello", "version": 1,
                                        "definition": definition("echo @@who@@ > hello.txt\n")})
    (doc,) = engine.wait_ended([app_job(engine)])
    assert doc["state"] == "finished", doc.get("status_message")
    assert doc["app"]["version"] == 1
    assert [o["path"] for o in doc["outputs"]] == ["hello.txt"]
    listing = engine.cli("app", "list").stdout
    assert "hello" in listing and "Say hello" in listing and "INVALID" not in listing
    assert "who (string)" in engine.cli("app", "show", "hello").stdout


def test_an_invalid_application_is_reported_and_its_jobs_end_in_error(engine: Engine) -> None:
    engine.store.db["apps"].insert_one({"_id": "hello@1", "name": "hello", "version": 1,
                                        "definition": definition("echo @@who@@ > hello.txt\n")})
    # Version 2, inserted by hand, names an input the definition does not have.
    engine.store.db["apps"].insert_one({"_id": "hello@2", "name": "hello", "version": 2,
                                        "definition": definition("echo @@whom@@\n")})
    reason = "definition.templates.execute: line 1: unknown markup @@whom@@"
    listing = engine.cli("app", "list").stdout
    assert "INVALID" in listing and reason in listing
    shown = engine.cli("app", "show", "hello", check=False)
    assert shown.returncode == 1 and reason in shown.stderr
    latest, pinned = app_job(engine), app_job(engine, version=1)
    bad, good = engine.wait_ended([latest, pinned])
    assert bad["state"] == "error" and reason in bad["status_message"]
    assert bad["status_message"].startswith("app: application 'hello' version 2 is invalid")
    assert bad.get("reason") == "invalid_document"
    assert good["state"] == "finished", good.get("status_message")
    engine.wait_for(lambda: reason in engine.log_file.read_text(), what="the log to say why")
    refused = engine.cli("submit", "--app", "hello", "--input", "who=Ada", check=False)
    assert refused.returncode == 1 and reason in refused.stderr
