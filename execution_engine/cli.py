"""The ``execd`` command line.

Daemon commands: ``start``, ``stop``, ``reload``, ``status`` (LSB exit codes: 0 running,
1 dead with a pid file left, 3 not running), ``run`` (foreground, for systemd and containers).
Client commands: ``submit``, ``jobs``, ``show``, ``wait``, ``kill``, ``route``, ``systems``.

Every command takes ``-c FILE`` (else ``$EXECD_CONFIG``, else ``/etc/execd/execd.ini``, else
built-in defaults). Errors are printed as ``execd: <what is wrong>`` with exit status 2 for usage
and configuration errors and 1 for the rest.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from bson import json_util
from pymongo.errors import PyMongoError

from execution_engine import __version__
from execution_engine.config import EngineConfig, engine_section_leniently, load_config
from execution_engine.daemon import (
    clear_stale_pid_file,
    read_pid,
    run_foreground,
    running_pid,
    signal_daemon,
    start_daemon,
    status_info,
    wait_gone,
    wait_reload,
)
from execution_engine.errors import ConfigError, ExecdError, NotRunning
from execution_engine.jobdoc import new_job_document
from execution_engine.states import ENDED_STATES, JobState
from execution_engine.store import JobStore, as_job_id

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
LSB_RUNNING, LSB_DEAD_PID_FILE, LSB_NOT_RUNNING = 0, 1, 3


# ---------------------------------------------------------------------- helpers
def mongodb_uri(config: EngineConfig) -> str:
    """The URI client commands use: the configured one, else the running embedded mongod's."""
    if config.mongodb.uri:
        return config.mongodb.uri
    try:
        uri = config.engine.mongodb_uri_file.read_text().strip()
    except OSError:
        uri = ""
    if not uri or running_pid(config.engine) is None:
        raise NotRunning(
            "execd is not running and no [mongodb] uri is configured: start it with "
            f"'execd start' (config: {config.describe_source()})"
        )
    return uri


def open_store(config: EngineConfig) -> JobStore:
    return JobStore.open(mongodb_uri(config), config.mongodb.database,
                         timeout=config.mongodb.server_selection_timeout, app_name="execd-cli")


def find_job(store: JobStore, job_id: str) -> dict[str, Any]:
    doc = store.get(job_id)
    if doc is None:
        raise ExecdError(f"no job {job_id}")
    return doc


def as_json(doc: Any) -> str:
    return json.dumps(json.loads(json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS)),
                      indent=2)


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-"


# ---------------------------------------------------------------------- daemon commands
def check_plugins(config: EngineConfig) -> None:
    """Load every plugin once, so that a broken one stops the start with its reason."""
    from execution_engine.registry import load_registry

    load_registry(config)


def cmd_start(config: EngineConfig, args: argparse.Namespace) -> int:
    check_plugins(config)
    code, message = start_daemon(config)
    print(message, file=sys.stdout if code == 0 else sys.stderr)
    return code


def cmd_run(config: EngineConfig, args: argparse.Namespace) -> int:
    check_plugins(config)
    return run_foreground(config)


def cmd_stop(config: EngineConfig, args: argparse.Namespace) -> int:
    pid = running_pid(config.engine)
    if pid is None:
        note = clear_stale_pid_file(config)
        print(note or "execd is not running")
        return EXIT_OK
    signal_daemon(config.engine, signal.SIGTERM)
    print(f"stopping execd (pid {pid})...", flush=True)
    if wait_gone(pid, args.timeout):
        print("execd stopped")
        return EXIT_OK
    print(f"execd: still running after {args.timeout:.0f}s (pid {pid}); "
          "'execd stop' again sends a second TERM, which kills the actors", file=sys.stderr)
    return EXIT_FAIL


def cmd_reload(config: EngineConfig | None, args: argparse.Namespace) -> int:
    """Signal the daemon, which checks the configuration and plugins itself (and logs a refusal),
    then print its verdict. ``config`` is None when the file does not validate: the daemon is
    then found from the ``[engine]`` section alone, and refuses the reload, saying why."""
    engine = config.engine if config is not None else engine_section_leniently(args.config)
    since = time.time()
    pid = signal_daemon(engine, signal.SIGHUP)
    result = wait_reload(engine, since, args.timeout)
    if result is None:
        print(f"execd: no answer to the reload from pid {pid} in {args.timeout:.0f}s",
              file=sys.stderr)
        return EXIT_FAIL
    if not result.get("ok"):
        print(f"execd: reload refused, previous configuration kept: {result.get('error')}",
              file=sys.stderr)
        return EXIT_FAIL
    print(f"execd reloaded (pid {pid})")
    for key in result.get("needs_restart", []):
        print(f"note: {key} changed; it takes effect at the next restart")
    return EXIT_OK


def cmd_status(config: EngineConfig, args: argparse.Namespace) -> int:
    pid = running_pid(config.engine)
    if pid is None:
        stale = read_pid(config.engine.pid_file)
        if stale is not None:
            print(f"execd is not running, but its pid file {config.engine.pid_file} names "
                  f"pid {stale}")
            return LSB_DEAD_PID_FILE
        print("execd is not running")
        return LSB_NOT_RUNNING
    info = status_info(config)
    uptime = time.time() - float(info.get("started_at", time.time()))
    print(f"execd is running: pid {pid}, up {_fmt_duration(uptime)}")
    print(f"config:   {config.describe_source()}")
    uri = info.get("mongodb_uri") or config.mongodb.uri
    print(f"database: {uri} ({config.mongodb.database})"
          + (" [embedded]" if info.get("embedded_mongodb") else ""))
    try:
        store = JobStore.open(uri, config.mongodb.database, timeout=3)
        counts = store.counts()
        store.close()
    except PyMongoError as exc:
        print(f"jobs:     database not reachable ({exc})")
        return LSB_RUNNING
    print("jobs:")
    for state in JobState:
        if counts.get(state.value):
            print(f"  {state.value:<16} {counts[state.value]}")
    others = {k: v for k, v in counts.items() if k not in {s.value for s in JobState}}
    for value, n in others.items():
        print(f"  {value!r:<16} {n} (not a job state)")
    if not counts:
        print("  (none)")
    return LSB_RUNNING


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


# ---------------------------------------------------------------------- client commands
def env_options(items: list[str] | None) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a mapping; a malformed one is a usage error."""
    env = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"submit: --env {item!r} is not NAME=VALUE")
        env[key] = value
    return env


def cmd_submit(config: EngineConfig, args: argparse.Namespace) -> int:
    if args.app:  # an application job (execd submit --app NAME --input ...)
        from execution_engine.cli_apps import cmd_submit_app

        return cmd_submit_app(config, args)
    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("submit: give the command after '--', e.g. execd submit -- echo hi")
    env = env_options(args.env)
    doc = new_job_document(command, name=args.name, owner=args.owner, project=args.project,
                           environment=env, notify=False if args.no_notify else None)
    store = open_store(config)
    try:
        job_id = store.insert(doc)
    finally:
        store.close()
    print(job_id)
    return EXIT_OK


def cmd_jobs(config: EngineConfig, args: argparse.Namespace) -> int:
    store = open_store(config)
    try:
        query: dict[str, Any] = {}
        if args.state:
            query["state"] = args.state
        if args.owner:
            query["owner"] = args.owner
        if args.no_subjobs:
            query["parent"] = {"$exists": False}
        if args.parent:
            query["parent"] = find_job(store, args.parent)["_id"]
        cursor = store.jobs.find(query, {"history": 0, "outputs": 0}).sort("_id", -1)
        docs = list(cursor.limit(args.limit))
    finally:
        store.close()
    if args.json:
        print(as_json(docs))
        return EXIT_OK
    rows = [(str(d["_id"]), str(d.get("state", "?")), str(d.get("name", "-"))[:30],
             str(d.get("owner", "-"))[:24], str(d.get("system", "-")),
             _fmt_time(d.get("updated_at") or d.get("created_at"))) for d in docs]
    header = ("ID", "STATE", "NAME", "OWNER", "SYSTEM", "UPDATED")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_show(config: EngineConfig, args: argparse.Namespace) -> int:
    store = open_store(config)
    try:
        doc = find_job(store, args.job)
    finally:
        store.close()
    if args.json:
        print(as_json(doc))
        return EXIT_OK
    fields = ["state", "status_message", "name", "owner", "project", "command", "system",
              "route", "native_id", "host", "exit_code", "job_dir", "created_at",
              "submitted_at", "started_at", "ended_at"]
    print(f"job {doc['_id']}")
    for field in fields:
        if field in doc and doc[field] not in (None, ""):
            value = doc[field]
            shown = _fmt_time(value) if field.endswith("_at") else value
            print(f"  {field + ':':<16}{shown}")
    if doc.get("cancel_requested"):
        print(f"  {'cancel:':<16}requested")
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
            print(f"    {_fmt_time(entry.get('at'))}  {entry.get('state')}{message}")
    return EXIT_OK


def cmd_wait(config: EngineConfig, args: argparse.Namespace) -> int:
    """Exit 0 when the job finished with exit code 0; 1 when it ended otherwise; 124 on
    timeout (as timeout(1) does)."""
    store = open_store(config)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    ended = {s.value for s in ENDED_STATES}
    try:
        while True:
            doc = find_job(store, args.job)
            if doc.get("state") in ended:
                break
            if deadline is not None and time.monotonic() >= deadline:
                print(f"execd: job {args.job} still {doc.get('state')} after {args.timeout}s",
                      file=sys.stderr)
                return 124
            time.sleep(0.1)
    finally:
        store.close()
    state = doc["state"]
    detail = f": {doc['status_message']}" if doc.get("status_message") else ""
    print(f"{doc['_id']} {state}{detail}")
    return EXIT_OK if state == JobState.FINISHED.value and doc.get("exit_code") == 0 else EXIT_FAIL


def cmd_kill(config: EngineConfig, args: argparse.Namespace) -> int:
    store = open_store(config)
    try:
        doc = store.request_cancel(as_job_id(args.job))
    finally:
        store.close()
    if doc is None:
        raise ExecdError(f"no job {args.job}")
    if doc.get("state") in {s.value for s in ENDED_STATES}:
        print(f"{doc['_id']} already ended ({doc['state']})")
    else:
        print(f"{doc['_id']} cancellation requested (was {doc.get('state')})")
    return EXIT_OK


def cmd_route(config: EngineConfig, args: argparse.Namespace) -> int:
    """Which route the job took (recorded on the job) and which it would take by the current
    configuration, with every route's and every rule's verdict. Exit 0 when a route accepts it.
    """
    # Imported here: plugin loading is only for the commands that need it.
    from execution_engine.registry import load_registry
    from execution_engine.routing.dispatcher import Dispatcher
    from execution_engine.routing.guard import RuleGuard, RuleTimeout

    store = open_store(config)
    try:
        doc = find_job(store, args.job)
    finally:
        store.close()
    job_id = doc["_id"]
    dispatcher = Dispatcher.from_config(config, load_registry(config).rules)
    if doc.get("route"):
        print(f"job {job_id} took route {doc['route']} -> system {doc.get('system')}")
    else:
        print(f"job {job_id} has not been routed yet (state: {doc.get('state')})")
    print(f"routes of {config.describe_source()}, in order (a route passes when ALL its rules "
          "pass; the first that passes is taken):")
    guard = RuleGuard(config.plugins.rule_timeout)
    try:
        decision = guard.decide(dispatcher, doc)
    except RuleTimeout as exc:
        print(f"  {exc}")
        print(f"job {job_id}: routing would end it in error: {exc}")
        return EXIT_FAIL
    finally:
        guard.close()
    for line in dispatcher.describe(decision):
        print(f"  {line}")
    chosen = decision.chosen
    verb = "would take" if not doc.get("route") else "by the current routes would take"
    if chosen is not None:
        print(f"job {job_id} {verb} route {chosen.route} -> {chosen.system}")
        return EXIT_OK
    print(f"job {job_id}: {decision.reason()}")
    return EXIT_FAIL


def cmd_systems(config: EngineConfig, args: argparse.Namespace) -> int:
    """The configured execution systems, the loaded system classes and rules with where each
    comes from (built-in, a folder's file, an entry point), and the routes."""
    import inspect

    from execution_engine.registry import load_registry
    from execution_engine.routing.context import Capabilities

    registry = load_registry(config)
    print("execution systems (config section: class, capabilities, source):")
    for section in config.systems:
        source = registry.sources.get(f"system:{section.cls}", "?")
        capabilities = Capabilities.from_options(section.options).describe()
        print(f"  {section.name}: {section.cls}; {capabilities}; from {source}")
    print("execution system classes loaded:")
    for kind in sorted(registry.systems):
        print(f"  {kind}: {registry.systems[kind].__name__}, from "
              f"{registry.sources[f'system:{kind}']}")
    print("routing rules loaded:")
    for name in sorted(registry.rules):
        try:
            params = inspect.signature(registry.rules[name]).parameters.values()
            signature = "(" + ", ".join(
                p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                for p in params) + ")"
        except (TypeError, ValueError):
            signature = "(job, ...)"
        print(f"  {name}{signature}, from {registry.sources[f'rule:{name}']}")
    print("routes (in order; ALL rules of a route must pass, the first route that passes wins):")
    for route in config.routes:
        rules = ", ".join(r.name + (f"({', '.join(f'{k}={v!r}' for k, v in r.params.items())})"
                                    if r.params else "") for r in route.rules)
        print(f"  {route.name} -> {route.system}: {rules or 'no rules: every job'}")
    for note in registry.notes:
        print(f"note: {note}")
    return EXIT_OK


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from execution_engine.cli_apps import add_app_commands, add_submit_app_options

    parser = argparse.ArgumentParser(
        prog="execd", description="execd: a job execution engine daemon.")
    parser.add_argument("-c", "--config", help="configuration file (default: $EXECD_CONFIG, "
                        "else /etc/execd/execd.ini, else built-in defaults)")
    parser.add_argument("--version", action="version", version=f"execd {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub.add_parser("start", help="start the daemon in the background").set_defaults(func=cmd_start)
    sub.add_parser("run", help="run the daemon in the foreground").set_defaults(func=cmd_run)
    p = sub.add_parser("stop", help="stop the daemon (running jobs keep running)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait (default 90)")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("reload", help="re-read the configuration and plugins")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_reload)
    sub.add_parser("status", help="is the daemon running? (LSB exit codes)"
                   ).set_defaults(func=cmd_status)

    p = sub.add_parser("submit", help="submit a job: execd submit [options] -- CMD [ARG...]")
    p.add_argument("--name")
    p.add_argument("--owner", help="owner (an email address is notified at the end)")
    p.add_argument("--project")
    p.add_argument("--env", action="append", metavar="NAME=VALUE")
    p.add_argument("--no-notify", action="store_true", help="do not notify the owner")
    p.add_argument("command", nargs=argparse.REMAINDER)
    add_submit_app_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--state", choices=[s.value for s in JobState], metavar="STATE")
    p.add_argument("--owner")
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

    p = sub.add_parser("route", help="which route a job took or would take, and why")
    p.add_argument("job")
    p.set_defaults(func=cmd_route)

    sub.add_parser("systems", help="list execution systems, rules and routes"
                   ).set_defaults(func=cmd_systems)
    add_app_commands(sub)  # app add|list|show, fetch
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            config = load_config(args.config)
        except ConfigError:
            if args.func is not cmd_reload:
                raise
            return cmd_reload(None, args)
        code: int = args.func(config, args)
        return code
    except ConfigError as exc:
        print(f"execd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ExecdError, PyMongoError, OSError) as exc:
        print(f"execd: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
