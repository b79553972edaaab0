"""Application jobs end to end: a real daemon on a real mongod running them on Local."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Engine

APPS = Path(__file__).parent / "apps"
NASTY = ["; rm -rf /tmp/execd-pwned-e2e", "$(touch /tmp/execd-pwned-e2e)",
         "`touch /tmp/execd-pwned-e2e`", "two\nlines", "it's", 'a "quote"', "$HOME *",
         "@@JOB_DIR@@", "> /tmp/execd-redirect-e2e"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_app(engine: Engine, name: str) -> None:
    out = engine.cli("app", "add", str(APPS / name)).stdout
    assert f"application {name} version" in out


def app_job(engine: Engine, app: str, inputs: list[dict[str, Any]], **fields: Any) -> Any:
    return engine.insert({"state": "to be built", "app": {"name": app}, "inputs": inputs,
                          **fields})


def alltypes_inputs(text: Path, **values: Any) -> list[dict[str, Any]]:
    given = {"count": 3, "ratio": 0.25, "title": "A title", "note": "a note", "code": "XY42",
             "verbose": True, "mode": "very slow", **values}
    return [*({"name": k, "value": v} for k, v in given.items()),
            {"name": "text", "type": "file", "path": str(text), "action": "COPY"}]


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "input text.txt"
    path.write_text("alpha\nbeta\ngamma\ndelta\n")
    return path


def test_app_add_list_show_versions_and_refusal(engine: Engine, tmp_path: Path) -> None:
    assert "added application alltypes version 1" in \
        engine.cli("app", "add", str(APPS / "alltypes")).stdout
    assert "already this definition: nothing added" in \
        engine.cli("app", "add", str(APPS / "alltypes")).stdout
    changed = tmp_path / "alltypes"
    shutil.copytree(APPS / "alltypes", changed)
    (changed / "epilog.sh").unlink()
    assert "version 2" in engine.cli("app", "add", str(changed)).stdout
    listing = engine.cli("app", "list").stdout
    assert "alltypes" in listing and " 2 " in listing
    shown = engine.cli("app", "show", "alltypes", "--version", "1").stdout
    assert "application alltypes version 1" in shown
    assert "count (int) How many lines: required; min 1; max 100" in shown
    assert "phases: prolog, execute, epilog" in shown
    assert "env/default.sh, env/local.sh" in shown
    (changed / "execute.sh").write_text("echo @@nosuch@@\n")
    refused = engine.cli("app", "add", str(changed), check=False)
    assert refused.returncode == 1
    assert "execute.sh: line 1: unknown markup @@nosuch@@" in refused.stderr
    assert engine.cli("app", "show", "nothing", check=False).returncode == 1


def test_every_input_type_runs_on_local_with_outputs_checksummed_fetched_and_verified(
        engine: Engine, text: Path, tmp_path: Path) -> None:
    add_app(engine, "alltypes")
    job = app_job(engine, "alltypes", alltypes_inputs(text), owner="alice", project="apps")
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "finished", doc.get("status_message")
    assert doc["exit_code"] == 0
    assert doc["app"] == {"name": "alltypes", "version": 1}
    job_dir = Path(doc["job_dir"])
    staged = job_dir / "input text.txt"
    assert staged.read_text() == text.read_text() and not staged.is_symlink()
    records = (job_dir / "values.bin").read_bytes().split(b"\0")[:-1]
    assert [r.decode() for r in records] == ["3", "0.25", "A title", "a note", "XY42", "true",
                                             "very slow", str(staged)]
    # The snippet of the job's execution system ("local"), not the default one.
    assert (job_dir / "execute.stdout").read_text() == \
        "verbose mode\nsite=local home=/srv/alltypes\n"
    assert (job_dir / "environment.stdout").read_text() == \
        "environment of alltypes on local\n"
    summary = (job_dir / "summary.txt").read_text()
    assert f"job={job}\ndir={job_dir}\n" in summary
    assert "name=alltypes project=apps owner=alice" in summary
    assert "app=alltypes version=1 system=local cores=1" in summary
    for phase in ("environment", "prolog", "execute", "epilog"):
        assert (job_dir / ".execd" / f"{phase}.exit_code").read_text() == "0\n"
    # Outputs: the patterns only, with sizes and checksums.
    names = ["results/input-copy.txt", "results/lines.txt", "results/text-lines.txt",
             "summary.txt", "values.bin"]
    assert [o["path"] for o in doc["outputs"]] == names
    for output in doc["outputs"]:
        path = job_dir / output["path"]
        assert output["size"] == path.stat().st_size
        assert output["sha256"] == sha256(path)
    # The output sandbox: fetched, verified, then marked.
    dest = tmp_path / "fetched"
    out = engine.cli("fetch", str(job), str(dest), "--mark").stdout
    assert f"fetched 5 of 5 outputs of job {job}" in out and "marked 5" in out
    for name in names:
        assert (dest / name).read_bytes() == (job_dir / name).read_bytes()
    assert not list(dest.rglob("*.part"))
    marked = engine.store.get(job)
    assert marked["outputs_fetched_at"] and all(o["fetched_at"] for o in marked["outputs"])
    # An interrupted fetch (a truncated copy, a leftover temporary) is repaired by fetching
    # again; what is already there and right is kept.
    (dest / "summary.txt").write_text("half")
    (dest / ".values.bin.0123456789ab.part").write_text("left by a crash")
    again = engine.cli("fetch", str(job), str(dest)).stdout
    assert "fetched 5 of 5" in again and "(4 already there)" in again
    assert (dest / "summary.txt").read_bytes() == (job_dir / "summary.txt").read_bytes()
    assert not list(dest.rglob("*.part"))


def test_a_changed_output_is_not_fetched_and_not_marked(engine: Engine, text: Path,
                                                        tmp_path: Path) -> None:
    add_app(engine, "alltypes")
    (doc,) = engine.wait_ended([app_job(engine, "alltypes", alltypes_inputs(text))])
    assert doc["state"] == "finished", doc.get("status_message")
    Path(doc["job_dir"], "values.bin").write_bytes(b"tampered")
    dest = tmp_path / "dest"
    result = engine.cli("fetch", str(doc["_id"]), str(dest), "--mark", check=False)
    assert result.returncode == 1
    assert "values.bin:" in result.stderr and "not fetched" in result.stderr
    assert not (dest / "values.bin").exists()
    assert (dest / "summary.txt").exists()
    assert "outputs_fetched_at" not in engine.store.get(doc["_id"])


def test_submit_from_the_command_line_with_inputs_and_a_linked_file(engine: Engine,
                                                                    text: Path) -> None:
    add_app(engine, "alltypes")
    out = engine.cli("submit", "--app", "alltypes", "--input", "count=2",
                     "--input", "title=@@at sign", "--input", "verbose=no",
                     "--input", f"text=@{text}", "--link", "text", "--name", "from cli")
    job = engine.store.get(out.stdout.strip())["_id"]
    (doc,) = engine.wait_ended([job])
    assert doc["state"] == "finished", doc.get("status_message")
    assert doc["name"] == "from cli" and doc["app"]["name"] == "alltypes"
    staged = Path(doc["job_dir"], text.name)
    assert staged.is_symlink() and staged.resolve() == text.resolve()
    records = Path(doc["job_dir"], "values.bin").read_bytes().split(b"\0")
    assert records[:3] == [b"2", b"0.5", b"@at sign"]
    assert records[5] == b"false"
    assert all(o["path"] != text.name for o in doc["outputs"])  # a link is never an output
    missing = engine.cli("submit", "--app", "nosuchapp", check=False)
    assert missing.returncode == 1 and "no application 'nosuchapp'" in missing.stderr


def test_invalid_inputs_end_the_job_in_error_naming_every_problem(engine: Engine,
                                                                  tmp_path: Path) -> None:
    add_app(engine, "alltypes")
    folder = tmp_path / "folder"
    folder.mkdir()
    bad = app_job(engine, "alltypes", [
        {"name": "count", "value": 500},
        {"name": "ratio", "value": "much"},
        {"name": "code", "value": "lower1"},
        {"name": "verbose", "value": "maybe"},
        {"name": "mode", "value": "sideways"},
        {"name": "text", "type": "file", "path": str(tmp_path / "missing.txt")},
        {"name": "colour", "value": "red"},
    ])
    not_a_file = app_job(engine, "alltypes", alltypes_inputs(folder))
    wrong_type = app_job(engine, "alltypes", [{"name": "count", "type": "int", "value": "x"},
                                              {"name": "title", "value": 42}])
    no_app = app_job(engine, "nosuchapp", [])
    no_version = engine.insert({"state": "to be built", "app": {"name": "alltypes",
                                                                "version": 9}})
    both = engine.insert({"state": "to be built", "app": {"name": "alltypes"},
                          "command": ["true"]})
    good = engine.submit("echo", "still fine")
    docs = engine.wait_ended([bad, not_a_file, wrong_type, no_app, no_version, both, good])
    for doc in docs[:-1]:
        assert doc["state"] == "error", doc
        assert "job_dir" not in doc and not doc.get("native_id")
    message = docs[0]["status_message"]
    assert message.startswith("invalid inputs for application alltypes version 1: ")
    for expected in ("input 'count' (How many lines): 500 is above the maximum 100",
                     "input 'ratio': 'much' is not a number",
                     "input 'code': 'lower1' does not match",
                     "input 'verbose': 'maybe' is not a boolean",
                     "input 'mode': 'sideways' is not one of",
                     f"input 'text' (Text to count): {tmp_path / 'missing.txt'} does not exist",
                     "input 'colour': application alltypes has no such input",
                     "input 'title' (Title): required, not given"):
        assert expected in message, (expected, message)
    assert f"{folder} is not a regular file" in docs[1]["status_message"]
    assert "'x' is not an integer" in docs[2]["status_message"]
    assert "42 is not a string" in docs[2]["status_message"]
    assert "input 'text' (Text to count): required, not given" in docs[2]["status_message"]
    assert "no application 'nosuchapp' is stored" in docs[3]["status_message"]
    assert "has no version 9 (stored: 1)" in docs[4]["status_message"]
    assert "command: not allowed with app" in docs[5]["status_message"]
    assert docs[-1]["state"] == "finished"


def test_injection_attempts_in_every_string_input_arrive_as_literal_text(
        engine: Engine, text: Path) -> None:
    add_app(engine, "alltypes")
    jobs = [app_job(engine, "alltypes", alltypes_inputs(text, title=nasty, note=nasty[::-1]))
            for nasty in NASTY]
    for nasty, doc in zip(NASTY, engine.wait_ended(jobs), strict=True):
        assert doc["state"] == "finished", (nasty, doc.get("status_message"))
        records = Path(doc["job_dir"], "values.bin").read_bytes().split(b"\0")
        assert records[2].decode() == nasty
        assert records[3].decode() == nasty[::-1]
    assert not Path("/tmp/execd-pwned-e2e").exists()
    assert not Path("/tmp/execd-redirect-e2e").exists()


def test_path_escape_attempts_in_file_inputs_are_refused(engine: Engine, text: Path,
                                                         tmp_path: Path) -> None:
    add_app(engine, "alltypes")
    attempts = ["../escaped.txt", "../../escaped.txt", "/tmp/escaped-abs.txt",
                ".execd/job.sh", "sub/../../escaped.txt"]
    jobs = []
    for target in attempts:
        inputs = alltypes_inputs(text)
        inputs[-1]["as"] = target
        jobs.append(app_job(engine, "alltypes", inputs))
    for target, doc in zip(attempts, engine.wait_ended(jobs), strict=True):
        assert doc["state"] == "error"
        assert f"input 'text' (Text to count): cannot be staged as {target!r}" in \
            doc["status_message"]
    assert not list(engine.jobs_dir.rglob("escaped*"))
    assert not Path("/tmp/escaped-abs.txt").exists()


def test_a_failing_phase_ends_the_job_in_error_naming_the_phase(engine: Engine) -> None:
    add_app(engine, "square")
    failing = app_job(engine, "square", [{"name": "n", "value": 4}, {"name": "fail",
                                                                     "value": "2 4"}])
    fine = app_job(engine, "square", [{"name": "n", "value": 5}])
    doc_failing, doc_fine = engine.wait_ended([failing, fine])
    assert doc_failing["state"] == "error"
    assert doc_failing["exit_code"] == 3
    assert doc_failing["status_message"] == "phase execute failed: exit code 3"
    assert Path(doc_failing["job_dir"], "execute.stderr").read_text() == "4 is set to fail\n"
    assert doc_failing["outputs"] == []
    assert doc_fine["state"] == "finished"
    assert Path(doc_fine["job_dir"], "square.txt").read_text() == "25\n"


def test_a_job_keeps_the_version_it_names_or_was_built_with(engine: Engine,
                                                             tmp_path: Path) -> None:
    add_app(engine, "square")
    changed = tmp_path / "square"
    shutil.copytree(APPS / "square", changed)
    (changed / "execute.sh").write_text("echo version two >square.txt\n")
    engine.cli("app", "add", str(changed))
    pinned = engine.insert({"state": "to be built", "app": {"name": "square", "version": 1},
                            "inputs": [{"name": "n", "value": 3}]})
    latest = app_job(engine, "square", [{"name": "n", "value": 3}])
    doc_pinned, doc_latest = engine.wait_ended([pinned, latest])
    assert doc_pinned["app"]["version"] == 1
    assert Path(doc_pinned["job_dir"], "square.txt").read_text() == "9\n"
    assert doc_latest["app"]["version"] == 2
    assert Path(doc_latest["job_dir"], "square.txt").read_text() == "version two\n"
