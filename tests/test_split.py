"""Split jobs end to end: a master, its subjobs through the normal engine, the master following
them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tests.conftest import Engine, _alive

APPS = Path(__file__).parent / "apps"


def add_app(engine: Engine, name: str) -> None:
    engine.cli("app", "add", str(APPS / name))


def split_job(engine: Engine, app: str, splitter: dict[str, Any],
              inputs: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
    return engine.insert({"state": "to be built", "app": {"name": app},
                          "inputs": inputs or [], "splitter": splitter, **fields})


def subjobs_of(engine: Engine, master: Any) -> list[dict[str, Any]]:
    return list(engine.store.jobs.find({"parent": master}).sort("index", 1))


def test_fifty_subjobs_over_a_range_run_and_the_master_finishes_with_all_outputs(
        engine: Engine, tmp_path: Path) -> None:
    add_app(engine, "square")
    master = split_job(engine, "square", {"input": "n", "range": [0, 50]}, owner="bob")
    (doc,) = engine.wait_ended([master], timeout=180)
    assert doc["state"] == "finished", doc.get("status_message")
    assert doc["status_message"] == "all 50 subjobs finished"
    assert doc["exit_code"] == 0
    assert doc["system"] == "split" and "native_id" not in doc
    assert doc["subjobs"] == {"total": 50, "counts": {"finished": 50}}
    states = [h["state"] for h in doc["history"]]
    assert states[:2] == ["building", "submitted"] and states[-1] == "finished"
    assert doc["notification"]["state"] in ("none", "due", "sent", "sending", "failed")
    subjobs = subjobs_of(engine, master)
    assert [s["index"] for s in subjobs] == list(range(50))
    master_dir = Path(doc["job_dir"])
    for sub in subjobs:
        assert sub["_id"] == f"{master}.{sub['index']}"
        assert sub["state"] == "finished" and sub["system"] == "local"
        assert sub["owner"] == "bob" and sub["notify"] is False
        assert sub["app"] == {"name": "square", "version": 1}
        assert Path(sub["job_dir"]) == master_dir / "subjobs" / str(sub["index"])
    # The master's outputs are its subjobs', with their checksums.
    assert [o["path"] for o in doc["outputs"]] == [f"subjobs/{i}/square.txt"
                                                    for i in range(50)]
    for i, output in enumerate(doc["outputs"]):
        data = (master_dir / output["path"]).read_bytes()
        assert data == f"{i * i}\n".encode()
        assert output["sha256"] == hashlib.sha256(data).hexdigest()
    dest = tmp_path / "results"
    assert "fetched 50 of 50" in engine.cli("fetch", str(master), str(dest)).stdout
    assert (dest / "subjobs" / "49" / "square.txt").read_text() == "2401\n"
    shown = engine.cli("show", str(master)).stdout
    assert "all 50 subjobs finished" in shown and "split into 50 subjobs" in shown
    # Listing: masters without their subjobs, or one master's subjobs.
    listed = json.loads(engine.cli("jobs", "--no-subjobs", "--json").stdout)
    assert [job["_id"] for job in listed] == [{"$oid": str(master)}]  # extended JSON
    listed = json.loads(engine.cli("jobs", "--parent", str(master), "--limit", "100",
                                   "--json").stdout)
    assert sorted(job["index"] for job in listed) == list(range(50))
    missing = engine.cli("jobs", "--parent", "nosuchjob", check=False)
    assert missing.returncode != 0 and "no job nosuchjob" in missing.stderr


def test_a_split_job_whose_subjobs_fail_ends_in_error_naming_them(engine: Engine) -> None:
    add_app(engine, "square")
    master = split_job(engine, "square", {"input": "n", "range": [0, 20]},
                       [{"name": "fail", "value": "4 11 17"}])
    (doc,) = engine.wait_ended([master], timeout=120)
    assert doc["state"] == "error"
    message = doc["status_message"]
    assert message.startswith("3 of 20 subjobs failed: ")
    for index in (4, 11, 17):
        assert f"#{index} {master}.{index} (phase execute failed: exit code 3)" in message
    assert doc["exit_code"] == 3
    assert doc["subjobs"]["counts"] == {"finished": 17, "error": 3}
    assert len(doc["outputs"]) == 17
    states = {s["index"]: s["state"] for s in subjobs_of(engine, master)}
    assert [i for i, state in states.items() if state == "error"] == [4, 11, 17]


def test_killing_the_master_mid_run_kills_its_subjobs(engine: Engine) -> None:
    add_app(engine, "square")
    master = split_job(engine, "square", {"input": "n", "values": list(range(10))},
                       [{"name": "pause", "value": 300}])
    engine.wait_for(lambda: sum(s["state"] == "running" for s in subjobs_of(engine, master))
                    >= 4, timeout=60, what="four subjobs running (the Local slots)")
    engine.wait_for(lambda: engine.store.get(master)["state"] == "running", what="the master")
    pids = []
    for sub in subjobs_of(engine, master):
        pid_file = Path(sub.get("job_dir", "/nonexistent"), ".execd", "pid")
        if sub["state"] == "running" and pid_file.exists():
            pids.append(int(pid_file.read_text()))
    assert pids
    assert "cancellation requested" in engine.cli("kill", str(master)).stdout
    (doc,) = engine.wait_ended([master], timeout=60)
    assert doc["state"] == "killed"
    assert doc["status_message"] == "killed on request"
    subjobs = subjobs_of(engine, master)
    assert len(subjobs) == 10
    assert {s["state"] for s in subjobs} == {"killed"}
    assert sum(1 for s in subjobs if s.get("native_id")) >= 4  # those that ran were killed
    engine.wait_for(lambda: not any(_alive(p) for p in pids), what="subjob processes to end")


def test_split_by_lines_and_by_files(engine: Engine, tmp_path: Path) -> None:
    add_app(engine, "linecount")
    text = tmp_path / "ten.txt"
    text.write_text("".join(f"line {i}\n" for i in range(10)))
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("b.txt", "a.txt", "c.txt"):
        (folder / name).write_text(f"{name}\n")
    (folder / ".hidden").write_text("skipped\n")
    (folder / "sub").mkdir()
    (folder / "link.txt").symlink_to(folder / "a.txt")
    by_lines = split_job(engine, "linecount", {"input": "text", "lines": 3},
                         [{"name": "text", "type": "file", "path": str(text)}])
    by_files = split_job(engine, "linecount", {"input": "text", "files": True},
                         [{"name": "text", "type": "file", "path": str(folder),
                           "action": "LINK"}])
    doc_lines, doc_files = engine.wait_ended([by_lines, by_files], timeout=120)
    assert doc_lines["state"] == "finished", doc_lines.get("status_message")
    counts = [Path(doc_lines["job_dir"], o["path"]).read_text().splitlines()
              for o in doc_lines["outputs"]]
    assert [c[0] for c in counts] == ["3", "3", "3", "1"]
    assert [line for c in counts for line in c[1:]] == [f"line {i}" for i in range(10)]
    for sub in subjobs_of(engine, by_lines):
        assert Path(sub["job_dir"], "ten.txt").is_symlink()  # chunks are linked, not copied
    assert doc_files["state"] == "finished", doc_files.get("status_message")
    contents = [Path(doc_files["job_dir"], o["path"]).read_text().splitlines()[1]
                for o in doc_files["outputs"]]
    assert contents == ["a.txt", "b.txt", "c.txt"]


def test_bad_split_jobs_end_in_error_naming_every_problem(engine: Engine,
                                                          tmp_path: Path) -> None:
    add_app(engine, "square")
    add_app(engine, "linecount")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_values = split_job(engine, "square", {"input": "n", "values": [1, -5, "x", 7]},
                           [{"name": "n", "value": 3}, {"name": "pause", "value": -1}])
    bad_input = split_job(engine, "square", {"input": "colour", "values": [1]})
    files_of_int = split_job(engine, "square", {"input": "n", "files": True})
    empty_dir = split_job(engine, "linecount", {"input": "text", "files": True},
                          [{"name": "text", "path": str(empty)}])
    no_source = split_job(engine, "linecount", {"input": "text", "lines": 2})
    two_ways = split_job(engine, "square", {"input": "n", "values": [1], "range": [1, 2]})
    docs = engine.wait_ended([bad_values, bad_input, files_of_int, empty_dir, no_source,
                              two_ways])
    assert all(d["state"] == "error" for d in docs)
    message = docs[0]["status_message"]
    for expected in ("input 'n': its values come from the splitter; do not give it",
                     "input 'pause' (Seconds to sleep first): -1.0 is below the minimum 0.0",
                     "splitter: value -5 (subjob 1): -5 is below the minimum 0",
                     "splitter: value 'x' (subjob 2): 'x' is not an integer"):
        assert expected in message, (expected, message)
    assert "splitter: input 'colour': application square has no such input" in \
        docs[1]["status_message"]
    assert "splitting by files needs a file input, not int" in docs[2]["status_message"]
    assert "gives no subjobs" in docs[3]["status_message"]
    assert "input 'text': the splitter splits it, but it is not given" in \
        docs[4]["status_message"]
    assert "splitter:" in docs[5]["status_message"]
    assert engine.store.jobs.count_documents({"parent": {"$exists": True}}) == 0
