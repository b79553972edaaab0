"""Job commands, all through the client library (:mod:`execution_engine.client`): ``submit``,
``jobs``, ``show``, ``wait``, ``kill``, ``hold``, ``release``, ``resubmit``, ``fetch``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from execution_engine.cli.apps import add_submit_app_options, parse_inputs, parse_split
from execution_engine.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_TIMEOUT,
    as_json,
    env_options,
    fmt_time,
    opened_client,
    print_table,
)
from execution_engine.client import JobStatus
from execution_engine.config import EngineConfig
from execution_engine.errors import ConfigError
from execution_engine.identity import read_secret_file
from execution_engine.states import JobState

SHOWN_FIELDS = ("state", "status_message", "reason", "name", "owner", "project", "command",
                "system", "route", "native_id", "host", "exit_code", "job_dir", "created_at",
                "submitted_at", "started_at", "ended_at")


def add_commands(sub: Any) -> None:
    """Add the job commands to ``sub``, the subparsers of ``execd``."""
    p = sub.add_parser("submit", help="submit a job: execd submit [options] -- CMD [ARG...]")
    p.add_argument("--name")
    p.add_argument("--owner", help="owner (an email address is notified at the end)")
    p.add_argument("--project")
    p.add_argument("--env", action="append", metavar="NAME=VALUE")
    p.add_argument("--no-notify", action="store_true", help="do not notify the owner")
    _add_claim_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER)
    add_submit_app_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--state", choices=[s.value for s in JobState], metavar="STATE")
    p.add_argument("--owner")
    p.add_argument("--project")
    family = p.add_mutually_exclusive_group()
    family.add_argument("--no-subjobs", action="store_true",
                        help="leave out the subjobs of split jobs (their masters are listed)")
    family.add_argument("--parent", metavar="JOB", help="list the subjobs of split job JOB")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("show", help="show one job")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("wait", help="wait for a job to end (exit 0 if it finished with code 0)")
    p.add_argument("job")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("kill", help="cancel a job wherever it is")
    p.add_argument("job")
    p.set_defaults(func=cmd_kill)
    p = sub.add_parser("hold", help="hold a queued job on its execution system")
    p.add_argument("job")
    p.set_defaults(func=cmd_hold)
    p = sub.add_parser("release", help="release a held job")
    p.add_argument("job")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("resubmit", help="run an ended job again as a new attempt, with "
                       "changed requirements if given")
    p.add_argument("job")
    p.add_argument("--cores", type=int, help="cores the new attempt asks for")
    p.add_argument("--memory-mb", type=int, help="memory (MB) the new attempt asks for")
    p.add_argument("--walltime-s", type=int, help="wall time (seconds) the new attempt asks for")
    p.add_argument("--queue", help="queue the new attempt asks for")
    p.set_defaults(func=cmd_resubmit)

    p = sub.add_parser("fetch", help="copy a job's outputs into a folder, verified")
    p.add_argument("job")
    p.add_argument("dest", help="destination folder (made if missing)")
    p.add_argument("--mark", action="store_true", help="once all are verified, mark the "
                   "outputs fetched on the job")
    p.set_defaults(func=cmd_fetch)


def _add_claim_options(p: argparse.ArgumentParser) -> None:
    """``--client`` and ``--claim-secret-file``: sign the job's owner (identity/claims.py)."""
    p.add_argument("--client", default=os.environ.get("EXECD_CLIENT"),
                   help="sign the job's owner as this client of [identity] [[clients]] "
                        "(default: $EXECD_CLIENT)")
    p.add_argument("--claim-secret-file", default=os.environ.get("EXECD_CLAIM_SECRET_FILE"),
                   metavar="FILE", help="the client's secret (default: "
                                        "$EXECD_CLAIM_SECRET_FILE)")


def cmd_submit(config: EngineConfig, args: argparse.Namespace) -> int:
    """Insert a command job (``execd submit -- CMD ARG...``) or an application job
    (``execd submit --app NAME --input NAME=VALUE...``); prints its id."""
    command = args.command[1:] if args.command and args.command[0] == "--" else args.command
    common: dict[str, Any] = {
        "name": args.name, "owner": args.owner, "project": args.project,
        "environment": env_options(args.env), "notify": False if args.no_notify else None}
    claim_as = _claim_as(args)
    if claim_as is not None and not args.owner:
        raise ConfigError("submit: a signed job needs --owner (the claim is of its owner)")
    if args.app:
        if [a for a in command if a != "--"]:
            raise ConfigError("submit: give either --app or a command, not both")
        inputs = parse_inputs(args.input or [], args.link or [])
        splitter = parse_split(args.split)
        with opened_client(config) as client:
            client.claim_as = claim_as
            job = client.submit(app=args.app, app_version=args.app_version, inputs=inputs,
                                splitter=splitter, **common)
    else:
        if not command:
            raise ConfigError("submit: give the command after '--', e.g. execd submit -- echo hi")
        with opened_client(config) as client:
            client.claim_as = claim_as
            job = client.submit(command, **common)
    print(job.id)
    return EXIT_OK


def _claim_as(args: argparse.Namespace) -> tuple[str, bytes] | None:
    """The client and secret that sign the job (``--client``, ``--claim-secret-file``)."""
    if not args.client and not args.claim_secret_file:
        return None
    if not args.client or not args.claim_secret_file:
        raise ConfigError("submit: a signed job needs both --client and --claim-secret-file "
                          "($EXECD_CLIENT, $EXECD_CLAIM_SECRET_FILE)")
    try:
        secret = read_secret_file(Path(args.claim_secret_file), required=True)
    except ValueError as exc:
        raise ConfigError(f"submit: --claim-secret-file: {exc}") from None
    assert secret is not None
    return args.client, secret


def cmd_jobs(config: EngineConfig, args: argparse.Namespace) -> int:
    with opened_client(config) as client:
        docs = [job.document for job in client.jobs(
            owner=args.owner, state=args.state, project=args.project, parent=args.parent,
            subjobs=not args.no_subjobs, limit=args.limit)]
    if args.json:
        print(as_json(docs))
        return EXIT_OK
    print_table(("ID", "STATE", "NAME", "OWNER", "SYSTEM", "UPDATED"), [
        (str(d["_id"]), str(d.get("state", "?")), str(d.get("name", "-"))[:30],
         str(d.get("owner", "-"))[:24], str(d.get("system", "-")),
         fmt_time(d.get("updated_at") or d.get("created_at"))) for d in docs])
    return EXIT_OK


def cmd_show(config: EngineConfig, args: argparse.Namespace) -> int:
    with opened_client(config) as client:
        doc = client.job(args.job).document
    if args.json:
        print(as_json(doc))
        return EXIT_OK
    print(f"job {doc['_id']}")
    built = doc.get("built_command")
    for field in SHOWN_FIELDS:
        if field == "command" and isinstance(built, list):
            # What the engine built and ran, not what a client may have written since.
            print(f"  {'command:':<16}{built}")
            if doc.get("command") != built:
                print(f"  {'':<16}(the document's command was changed after building; "
                      "that change is not run)")
        elif field in doc and doc[field] not in (None, ""):
            value = doc[field]
            shown = fmt_time(value) if field.endswith("_at") else value
            print(f"  {field + ':':<16}{shown}")
    _show_account_and_requests(doc)
    _show_usage_and_attempts(doc)
    notification = doc.get("notification")
    if notification:
        print(f"  {'notification:':<16}{notification.get('state')}"
              + (f" ({notification['error']})" if notification.get("error") else ""))
    if doc.get("outputs"):
        print("  outputs:")
        for out in doc["outputs"]:
            print(f"    {out['path']} ({out.get('size')} bytes)")
    if doc.get("history"):
        print("  history:")
        for entry in doc["history"]:
            message = f"  {entry['message']}" if entry.get("message") else ""
            print(f"    {fmt_time(entry.get('at'))}  {entry.get('state')}{message}")
    return EXIT_OK


def _show_account_and_requests(doc: Mapping[str, Any]) -> None:
    """The ``runs as``, ``cancel`` and ``hold`` lines of ``execd show``."""
    account = doc.get("account")
    if isinstance(account, Mapping):
        print(f"  {'runs as:':<16}{account.get('name')} (uid {account.get('uid')})")
    if doc.get("cancel_requested"):
        print(f"  {'cancel:':<16}requested")
    if isinstance(doc.get("hold_requested"), bool):
        print(f"  {'hold:':<16}{'requested' if doc['hold_requested'] else 'release requested'}")


def _show_usage_and_attempts(doc: Mapping[str, Any]) -> None:
    """The ``usage``, ``attempt`` and earlier ``attempts`` lines of ``execd show``."""
    usage = doc.get("usage")
    if isinstance(usage, Mapping) and usage:
        print(f"  {'usage:':<16}" + ", ".join(f"{key} {value}" for key, value in usage.items()))
    attempts = doc.get("attempts")
    if isinstance(attempts, list) and attempts:
        print(f"  {'attempt:':<16}{doc.get('attempt')}")
        print("  earlier attempts:")
        for entry in attempts:
            if isinstance(entry, Mapping):
                print(f"    {entry.get('attempt')}: {entry.get('state')} ({entry.get('reason')})"
                      f" {entry.get('message') or ''} requirements {entry.get('requirements')}"
                      f" in {entry.get('job_dir')}")


def cmd_wait(config: EngineConfig, args: argparse.Namespace) -> int:
    """Exit 0 when the job finished with exit code 0; 1 when it ended otherwise; 124 on
    timeout (as timeout(1) does)."""
    with opened_client(config) as client:
        job = client.job(args.job)
        state = job.wait(args.timeout, poll_interval=0.2)
        if state is None:
            print(f"execd: job {args.job} still {job.status.state} after {args.timeout}s",
                  file=sys.stderr)
            return EXIT_TIMEOUT
    status = JobStatus.from_document(job.document)
    detail = f": {status.message}" if status.message else ""
    print(f"{job.id} {state}{detail}")
    return EXIT_OK if state == JobState.FINISHED.value and status.exit_code == 0 else EXIT_FAIL


def cmd_kill(config: EngineConfig, args: argparse.Namespace) -> int:
    with opened_client(config) as client:
        status = client.job(args.job).cancel()
    if status.ended:
        print(f"{status.job_id} already ended ({status.state})")
    else:
        print(f"{status.job_id} cancellation requested (was {status.state})")
    return EXIT_OK


def cmd_hold(config: EngineConfig, args: argparse.Namespace) -> int:
    with opened_client(config) as client:
        status = client.job(args.job).hold()
    return _report_hold(status, "hold")


def cmd_release(config: EngineConfig, args: argparse.Namespace) -> int:
    with opened_client(config) as client:
        status = client.job(args.job).release()
    return _report_hold(status, "release")


def cmd_resubmit(config: EngineConfig, args: argparse.Namespace) -> int:
    """Ask for a new attempt of an ended job; exit 1 when it has not ended."""
    changed = {key: value for key, value in (
        ("cores", args.cores), ("memory_mb", args.memory_mb),
        ("walltime_s", args.walltime_s), ("queue", args.queue)) if value is not None}
    with opened_client(config) as client:
        job = client.job(args.job)
        requirements = {**(job.document.get("requirements") or {}), **changed}
        try:
            status = job.resubmit(requirements if changed else None)
        except ValueError as exc:
            raise ConfigError(f"resubmit: {exc}") from None
    print(f"{status.job_id} resubmission requested (attempt {status.attempt} ended "
          f"{status.state})")
    return EXIT_OK


def _report_hold(status: JobStatus, what: str) -> int:
    if status.ended:
        print(f"{status.job_id} already ended ({status.state}): nothing to {what}")
    else:
        print(f"{status.job_id} {what} requested (state {status.state})")
    return EXIT_OK


def cmd_fetch(config: EngineConfig, args: argparse.Namespace) -> int:
    """Copy a job's listed outputs into DEST, each verified before it is renamed into place;
    with ``--mark``, mark them fetched once all are there. Exit 1 if any could not be."""
    dest = Path(args.dest)
    with opened_client(config) as client:
        job = client.job(args.job)
        report = job.fetch(dest, mark=args.mark)
        total = len(job.outputs())
    if not total:
        print(f"job {job.id} has no outputs")
        return EXIT_OK
    for problem in report.problems:
        print(f"execd: {problem}", file=sys.stderr)
    already = f" ({len(report.present)} already there)" if report.present else ""
    print(f"fetched {len(report.fetched)} of {total} outputs of job {job.id} "
          f"into {dest}{already}")
    if report.problems:
        return EXIT_FAIL
    if args.mark:
        print(f"marked {len(report.fetched)} outputs fetched")
    return EXIT_OK
