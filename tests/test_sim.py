"""The load generator: its three modes against a real daemon, its trace parser, its report."""

from __future__ import annotations

import gzip
import io
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from sim import execd_sim
from sim import workload as wl
from sim.plot import PlotUnavailable, require_matplotlib, stage_intervals
from sim.progress import Progress
from sim.report import build_report, format_report, percentile, summarize
from sim.swf import SwfError, SwfTrace, load_trace, parse_line
from tests.conftest import ROOT, Engine

LOCAL4 = "[systems]\n[[local]]\nclass = local\nslots = 4\n"
SWF_HEADER = """\
; Version: 2.2
; Computer: a test cluster
; MaxProcs: 64
;
"""


WITH_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
"""Run Python with SIGINT at its default action, as from a terminal: a suite started in the
background by a shell without job control hands its processes SIGINT ignored (and a program
keeps ignoring ^C then, as it should)."""


def sim_command(engine: Engine, report: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sim.execd_sim", "-c", str(engine.config_path),
            "--report", str(report), "--timeout", "90", *args]


def run_sim(engine: Engine, tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    report = tmp_path / "report.json"
    result = subprocess.run(sim_command(engine, report, *args), capture_output=True, text=True,
                            check=False, timeout=180, cwd=ROOT)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout, json.loads(report.read_text())


def swf_line(number: int, submit: float, run: float, *, procs: int = 1, status: int = 1,
             user: int = 3, group: int = 1, wait: float = 5) -> str:
    fields = [number, submit, wait, run, procs, -1, -1, procs, 600, -1, status, user, group,
              1, 1, 1, -1, -1]
    return " ".join(str(f) for f in fields)


# ---------------------------------------------------------------------- against a daemon
def test_scenario_submits_portal_jobs_and_reports_them(engine_factory, smtp,
                                                       tmp_path: Path) -> None:
    engine = engine_factory(LOCAL4 + f"[notification]\nsmtp_host = {smtp.host}\n"
                                     f"smtp_port = {smtp.port}\n")
    stdout, report = run_sim(engine, tmp_path, "--jobs", "24", "--speed", "40", "--seed", "3",
                             "--owner-domain", "example.org",
                             "--users", "2", "--projects", "2", "--progress-interval", "0.2")
    assert report["mode"] == "scenario"
    assert report["submitted"] == report["planned"] == report["jobs"] == 24
    assert report["counts"] == {"finished": 24}
    assert report["reasons"] == {"completed": 24}
    assert report["done"] == 24
    assert report["notification"] == {"sent": 24}  # owners are email addresses here
    assert len(smtp.messages) == 24
    assert not report["interrupted"] and not report["timed_out"]
    for step in ("inserted->built", "built->submitted", "running->ended", "ended->notified",
                 "inserted->notified"):
        assert report["latency_ms"][step]["n"] == 24
        assert 0 <= report["latency_ms"][step]["p50"] <= report["latency_ms"][step]["max"]
    assert report["throughput"]["notified_per_s"] > 0
    assert "submitted 24/24" in stdout  # plain progress lines: the output is not a terminal
    assert "latency (ms)" in stdout
    docs = list(engine.store.jobs.find({"metadata.sim_run": report["run_id"]}))
    assert len(docs) == 24
    assert {d["project"] for d in docs} <= {"organisateurs-de-voyage", "dans-le-cambouis"}
    assert {d["owner"] for d in docs} <= {"filochard@example.org", "ribouldingue@example.org"}
    outputs = {"blast": "blast2.txt", "golden": "abcd2_rat.fasta", "clustalw": "abcd.aln"}
    for doc in docs:  # the stand-ins read their inputs and wrote their outputs
        assert Path(doc["job_dir"], outputs[doc["name"]]).stat().st_size > 0
    data_dirs = {Path(a.split("=", 1)[-1]).parent for d in docs for a in d["command"]
                 if a.endswith((".fa", ".fasta"))}
    assert data_dirs and not any(p.exists() for p in data_dirs)  # removed once all were done


def test_burst_inserts_at_once_and_counts_only_its_own_jobs(engine_factory,
                                                            tmp_path: Path) -> None:
    engine = engine_factory(LOCAL4)
    other = engine.submit("true")  # another client's job in the same collection
    args = ["--burst", "40", "--trivial", "--seed", "1", "-q"]
    plot = tmp_path / "burst.png"
    try:
        require_matplotlib()
        args += ["--plot", str(plot)]
    except PlotUnavailable:
        plot = Path()
    _, report = run_sim(engine, tmp_path, *args)
    assert report["mode"] == "burst"
    assert report["jobs"] == report["submitted"] == 40
    assert report["counts"] == {"finished": 40}
    assert report["latency_ms"]["inserted->notified"]["n"] == 40
    docs = list(engine.store.jobs.find({"metadata.sim_run": report["run_id"]}))
    assert len({d["metadata"]["inserted_at"] for d in docs}) == 1  # one insert_many
    assert other not in {d["_id"] for d in docs}
    if plot != Path():
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_replays_arrivals_runtimes_and_requirements(engine_factory,
                                                          tmp_path: Path) -> None:
    engine = engine_factory(LOCAL4)
    lines = [swf_line(i, 10 * i, 30 + i, procs=1 + i % 3, user=i % 2, group=7)
             for i in range(1, 12)]
    lines.append(swf_line(12, 125, 4, status=0))  # failed at the site: fails here too
    lines.append(swf_line(13, 126, 5000))  # capped by --max-runtime
    trace = tmp_path / "site.swf"
    trace.write_text(SWF_HEADER + "\n".join(lines) + "\n")
    _, report = run_sim(engine, tmp_path, "--trace", str(trace), "--speed", "200",
                        "--max-runtime", "0.3", "-q")
    assert report["mode"] == "trace"
    assert report["submitted"] == 13
    assert report["counts"] == {"error": 1, "finished": 12}
    assert report["done"] == 13
    docs = {d["metadata"]["swf"]["job"]: d
            for d in engine.store.jobs.find({"metadata.sim_run": report["run_id"]})}
    assert docs[2]["requirements"] == {"cores": 3}
    assert docs[2]["owner"] == "swf-user-0" and docs[3]["owner"] == "swf-user-1"
    assert docs[2]["project"] == "swf-group-7"
    assert docs[2]["command"] == ["sleep", f"{32 / 200:.3f}"]
    assert docs[13]["command"] == ["sleep", "0.300"]
    assert docs[12]["state"] == "error" and docs[12]["exit_code"] == 1
    # Arrivals keep the trace's pattern, 200 times faster: job 11 came 0.5 s after job 1.
    gap = (docs[11]["metadata"]["inserted_at"] - docs[1]["metadata"]["inserted_at"])
    assert timedelta(seconds=0.45) <= gap <= timedelta(seconds=2)


def test_a_gzip_trace_replays_cancelled_jobs_as_cancelled_at_their_time(
        engine_factory, tmp_path: Path) -> None:
    engine = engine_factory(LOCAL4)
    lines = [swf_line(1, 0, 20), swf_line(2, 10, 20),
             # Cancelled after 60 s of run time (0.6 s here): killed while running.
             swf_line(3, 0, 60, status=5, wait=0),
             # Cancelled in the queue after 30 s (0.3 s here), never started at the site.
             swf_line(4, 5, -1, status=5, wait=30)]
    trace = tmp_path / "site.swf.gz"  # as the Parallel Workloads Archive ships them
    trace.write_bytes(gzip.compress((SWF_HEADER + "\n".join(lines) + "\n").encode()))
    out, report = run_sim(engine, tmp_path, "--trace", str(trace), "--speed", "100",
                          "--max-runtime", "2", "-q")
    assert "2 cancelled at their recorded time" in out
    assert "cancelled:     2 jobs by the simulator" in out
    assert report["counts"] == {"finished": 2, "killed": 2}
    assert report["cancel_requests"] == 2
    docs = {d["metadata"]["swf"]["job"]: d
            for d in engine.store.jobs.find({"metadata.sim_run": report["run_id"]})}
    for number, delay in ((3, 0.6), (4, 0.3)):
        doc = docs[number]
        assert doc["state"] == "killed" and doc["cancel_requested"] is True
        assert doc["metadata"]["swf"]["cancel_after_s"] == delay
        # Cancelled at its recorded time: not before it, and long before its command's end
        # (it sleeps past the cancellation, so it cannot finish first).
        lived = (doc["ended_at"] - doc["metadata"]["inserted_at"]).total_seconds()
        assert delay - 0.01 <= lived < delay + 2, lived
        assert float(doc["command"][1]) >= delay + 2
    assert "cancel_requested" not in docs[1] and docs[1]["state"] == "finished"


def test_interrupt_stops_submitting_and_reports_what_happened(engine_factory,
                                                              tmp_path: Path) -> None:
    engine = engine_factory(LOCAL4)
    report = tmp_path / "report.json"
    command = sim_command(engine, report, "--jobs", "500", "--speed", "5", "--trivial",
                          "--progress-interval", "0.1")
    process = subprocess.Popen(
        [sys.executable, "-c", WITH_SIGINT, *command[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        if "submitted" in line and "submitted 0/" not in line:
            break
        assert time.monotonic() < deadline, "no job submitted"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, out + err
    found = json.loads(report.read_text())
    assert found["interrupted"] is True
    assert 0 < found["submitted"] < 500
    assert found["jobs"] == found["submitted"]
    assert "(interrupted)" in out


# ---------------------------------------------------------------------- the SWF parser
def test_swf_parser_reads_jobs_header_and_sorts_by_submit_time(tmp_path: Path) -> None:
    trace = tmp_path / "t.swf"
    trace.write_text(SWF_HEADER + swf_line(2, 50, 10) + "\n\n"
                     + "; a comment between jobs\n" + swf_line(1, 20.5, -1, procs=-1) + "\n")
    parsed = load_trace(trace)
    assert parsed.header["Computer"] == "a test cluster"
    assert parsed.header["MaxProcs"] == "64"
    assert [j.number for j in parsed.jobs] == [1, 2]
    first = parsed.jobs[0]
    assert first.submit_time == 20.5
    assert first.duration == 600  # run time unknown: the requested time
    assert first.processors is None
    assert first.line == 8
    assert load_trace(trace, limit=1).jobs[0].number == 2  # the first job line of the file


@pytest.mark.parametrize(("text", "reason"), [
    ("1 0 0 10 1", "expected 18 fields, found 5"),
    (swf_line(1, 0, 10).replace(" 10 ", " ten ", 1), "field 4 (run time) is not a number"),
    (swf_line(1, -1, 10), "field 2 (submit time) must not be negative"),
    (swf_line(1, 0, 10).replace(" 10 ", " nan ", 1), "field 4 (run time) is not a finite"),
])
def test_swf_parser_names_the_file_and_line_of_a_malformed_line(tmp_path: Path, text: str,
                                                                 reason: str) -> None:
    trace = tmp_path / "bad.swf"
    trace.write_text(SWF_HEADER + swf_line(1, 0, 10) + "\n" + text + "\n")
    with pytest.raises(SwfError) as caught:
        load_trace(trace)
    assert str(caught.value).startswith(f"{trace}:6: {reason}")
    assert caught.value.line == 6


def test_swf_parser_blank_and_comment_lines_and_empty_trace(tmp_path: Path) -> None:
    assert parse_line("   ") is None
    assert parse_line("; MaxJobs: 3") is None
    empty = tmp_path / "empty.swf"
    empty.write_text(SWF_HEADER)
    with pytest.raises(SwfError, match="holds no job line"):
        load_trace(empty)
    with pytest.raises(SwfError, match="no such trace file"):
        load_trace(tmp_path / "missing.swf")


def test_swf_parser_reads_gzip_whatever_the_name_and_reports_a_corrupt_one(
        tmp_path: Path) -> None:
    text = SWF_HEADER + swf_line(2, 50, 10) + "\n" + swf_line(1, 20, 30, status=5, wait=7) + "\n"
    for name in ("t.swf.gz", "t.swf"):  # gzip is recognised by its magic bytes
        trace = tmp_path / name
        trace.write_bytes(gzip.compress(text.encode()))
        parsed = load_trace(trace)
        assert parsed.header["Computer"] == "a test cluster"
        assert [j.number for j in parsed.jobs] == [1, 2]
        cancelled = parsed.jobs[0]
        assert cancelled.cancelled and not parsed.jobs[1].cancelled
        assert cancelled.wait_time == 7 and cancelled.cancelled_after == 37
    big = "".join(swf_line(i, i, 10) + "\n" for i in range(1, 2001)).encode()
    cut = tmp_path / "cut.swf.gz"
    cut.write_bytes(gzip.compress(big)[:4000])
    with pytest.raises(SwfError, match=r"corrupt or truncated gzip data") as caught:
        load_trace(cut)
    assert str(caught.value).startswith(f"{cut}:")
    corrupt = tmp_path / "corrupt.swf.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 10)
    with pytest.raises(SwfError, match=r"corrupt or truncated gzip data"):
        load_trace(corrupt)


def test_a_cancelled_trace_job_is_cancelled_at_its_recorded_time() -> None:
    jobs = [parse_line(swf_line(1, 100, 40), line=1),
            parse_line(swf_line(2, 100, 40, status=5, wait=20), line=2),
            parse_line(swf_line(3, 300, -1, status=5, wait=5000), line=3)]
    trace = SwfTrace("t.swf", {}, [job for job in jobs if job is not None])
    waves = list(wl.trace(trace, speed=10, max_runtime=60).waves)
    assert [w.at for w in waves] == [0, 20]
    assert waves[0].cancels == {1: 6.0}  # (20 s waiting + 40 s running) / 10
    assert waves[1].cancels == {0: 60}  # capped by --max-runtime
    assert waves[0].jobs[0]["command"] == ["sleep", "4.000"]
    # The cancelled jobs sleep past their cancellation, however late they start.
    assert waves[0].jobs[1]["command"] == ["sleep", f"{6 + 60 + wl.CANCEL_MARGIN:.3f}"]
    assert waves[0].jobs[1]["metadata"]["swf"]["cancel_after_s"] == 6.0


def test_cli_reports_a_malformed_trace_before_touching_the_database(tmp_path: Path,
                                                                    capsys) -> None:
    trace = tmp_path / "bad.swf"
    trace.write_text(swf_line(1, 0, 10) + "\n1 2 3\n")
    code = execd_sim.main(["--uri", "mongodb://127.0.0.1:9/", "--trace", str(trace), "-q"])
    assert code == 2
    assert f"{trace}:2: expected 18 fields, found 3" in capsys.readouterr().err


# ---------------------------------------------------------------------- report, progress, plot
def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 90) == 7
    summary = summarize([3.0, 1.0, 2.0])
    assert summary is not None and (summary.n, summary.p50, summary.max) == (3, 2.0, 3.0)
    assert summarize([]) is None


def _doc(at: datetime, *, state: str = "finished", steps: int = 5) -> dict[str, Any]:
    ms = timedelta(milliseconds=10)
    doc: dict[str, Any] = {"_id": ObjectId(), "state": state,
                           "metadata": {"inserted_at": at}}
    for i, key in enumerate(["built_at", "submitted_at", "started_at", "ended_at"][:steps]):
        doc[key] = at + (i + 1) * ms
    if steps >= 4:
        doc["notification"] = {"state": "sent", "sent_at": at + 5 * ms}
    return doc


def test_report_counts_steps_and_throughput() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    docs = [_doc(start + timedelta(seconds=i)) for i in range(4)]
    docs.append({"_id": ObjectId(), "state": "error", "metadata": {"inserted_at": start},
                 "ended_at": start + timedelta(milliseconds=3),
                 "notification": {"state": "none"}})  # invalid job: never built
    report = build_report(docs, run={"run_id": "r"})
    assert report["counts"] == {"error": 1, "finished": 4}
    assert report["done"] == 5
    assert report["notification"] == {"none": 1, "sent": 4}
    assert report["latency_ms"]["inserted->built"]["n"] == 4
    assert report["latency_ms"]["inserted->built"]["p50"] == 10.0
    assert report["latency_ms"]["inserted->ended"]["n"] == 5
    assert report["latency_ms"]["inserted->notified"]["max"] == 50.0
    assert report["throughput"]["ended_per_s"] == round(5 / 3.04, 2)
    intervals = stage_intervals(docs)
    entered, left = intervals["running"]
    assert len(entered) == len(left) == 4
    assert report["usage"] == {"wall_s": None, "cpu_s": None, "max_rss_mb": None}
    assert report["resubmitted"] == 0


def test_report_summarises_reasons_usage_and_resubmissions() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    docs = [{**_doc(start), "reason": "completed",
             "usage": {"wall_s": float(i), "cpu_s": i / 2, "max_rss_mb": 100.0 * i}}
            for i in range(1, 5)]
    docs.append({**_doc(start), "state": "error", "reason": "walltime_exceeded", "attempt": 3,
                 "usage": {"node": "n1", "wall_s": True}})  # no figure the report takes
    report = build_report(docs, run={"run_id": "r", "mode": "burst"})
    assert report["reasons"] == {"completed": 4, "walltime_exceeded": 1}
    assert report["resubmitted"] == 1
    assert report["usage"]["wall_s"]["n"] == 4 and report["usage"]["wall_s"]["max"] == 4.0
    assert report["usage"]["cpu_s"]["p50"] == 1.0
    assert report["usage"]["max_rss_mb"]["p90"] == 400.0
    text = format_report({**report, "submitted": 5, "planned": 5, "submit_s": 0.1})
    assert "reasons:       completed 4, walltime_exceeded 1" in text
    assert "resubmitted:   1 jobs ran more than once" in text
    assert "max memory (MB)" in text and "usage (ended jobs)" in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_on_a_terminal_and_prints_lines_otherwise() -> None:
    plain = io.StringIO()
    progress = Progress(plain, 10, interval=0)
    progress.show(3, {"running": 2, "finished": 1}, 1)
    progress.show(4, {"finished": 4}, 4)
    progress.finish()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and "submitted 3/10" in lines[0] and "running 2" in lines[0]
    terminal = _Terminal()
    progress = Progress(terminal, 10, interval=0)
    progress.show(3, {"running": 3}, 0)
    progress.show(5, {"running": 5}, 0)
    progress.finish()
    assert terminal.getvalue().count("\r\x1b[2K") == 2
    assert terminal.getvalue().endswith("\n") and terminal.getvalue().count("\n") == 1


def test_plot_without_matplotlib_is_a_clear_usage_error(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotUnavailable, match=r"pip install 'execd\[sim\]'"):
        require_matplotlib()
    code = execd_sim.main(["--uri", "mongodb://127.0.0.1:9/", "--plot", "x.png", "-q"])
    assert code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
