"""Daemon commands: ``start``, ``run``, ``stop``, ``reload``, ``status``.

``status`` exits with LSB codes: 0 running (every actor fine), 1 running but degraded (an actor
is ``failing``: it keeps dying and its restarts were given up for a while) or dead with a pid
file left, 3 not running.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pymongo.errors import PyMongoError

from execution_engine.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    LSB_DEAD_PID_FILE,
    LSB_NOT_RUNNING,
    LSB_RUNNING,
    fmt_duration,
    fmt_time,
    opened_store,
    print_table,
)
from execution_engine.config import EngineConfig, engine_section_leniently
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
from execution_engine.mongoaccess import describe_database_error, redact_uri
from execution_engine.states import JobState

EXIT_DEGRADED = 1
FAILING = "failing"


def add_commands(sub: Any) -> None:
    """Add the daemon commands to ``sub``, the subparsers of ``execd``."""
    sub.add_parser("start", help="start the daemon in the background").set_defaults(func=cmd_start)
    sub.add_parser("run", help="run the daemon in the foreground").set_defaults(func=cmd_run)
    p = sub.add_parser("stop", help="stop the daemon (running jobs keep running)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait (default 90)")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("reload", help="re-read the configuration and plugins")
    p.add_argument("--timeout", type=float, default=120.0)
    # The daemon checks the configuration itself: a file that does not validate is still
    # signalled, and the daemon says why it refuses it.
    p.set_defaults(func=cmd_reload, lenient_config=True)
    sub.add_parser("status", help="is the daemon running, and are its actors well? (LSB exit "
                   "codes; 1 also when running but degraded)").set_defaults(func=cmd_status)


def check_plugins(config: EngineConfig) -> None:
    """Load every plugin once, so that a broken one stops the start with its reason."""
    from execution_engine.plugins import load_registry

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
    print(f"execd is running: pid {pid}, up {fmt_duration(uptime)}")
    print(f"config:   {config.describe_source()}")
    # The configured URI carries the credentials; the daemon publishes its URI redacted.
    uri = config.mongodb.uri or info.get("mongodb_uri") or ""
    print(f"database: {redact_uri(uri)} ({config.mongodb.database})"
          + (" [embedded]" if info.get("embedded_mongodb") else ""))
    try:
        with opened_store(config, uri=uri, timeout=3) as store:
            counts = store.counts()
            daemon = store.daemon_document(str(info.get("instance") or ""))
    except PyMongoError as exc:
        print(f"jobs:     database not reachable "
              f"({describe_database_error(exc, uri, config.mongodb.database)})")
        return LSB_RUNNING
    print_counts(counts)
    actors = daemon.get("actors") if daemon is not None else None
    if not isinstance(actors, list):
        print("actors:   not reported yet")
        return LSB_RUNNING
    failing = print_actors(actors)
    if failing:
        print(f"execd is running but degraded: {', '.join(failing)} "
              f"{'is' if len(failing) == 1 else 'are'} failing (see the log)")
        return EXIT_DEGRADED
    return LSB_RUNNING


def print_counts(counts: Mapping[str, int]) -> None:
    print("jobs:")
    known = {s.value for s in JobState}
    for state in JobState:
        if counts.get(state.value):
            print(f"  {state.value:<16} {counts[state.value]}")
    for value, n in counts.items():
        if value not in known:
            print(f"  {value!r:<16} {n} (not a job state)")
    if not counts:
        print("  (none)")


def print_actors(actors: Sequence[Any]) -> list[str]:
    """Print the actors table of a daemon document's ``actors``; the names of those failing."""
    rows = []
    failing = []
    for actor in actors:
        if not isinstance(actor, Mapping):
            continue
        name = str(actor.get("name") or f"{actor.get('kind')}-{actor.get('index')}")
        state = str(actor.get("state") or "?")
        if state == FAILING:
            failing.append(name)
        pid = actor.get("pid")
        rows.append((name, state, str(actor.get("restarts", 0)),
                     str(pid) if pid is not None else "-", fmt_time(actor.get("since")),
                     str(actor.get("last_exit") or "-")))
    print("actors:")
    print_table(("NAME", "STATE", "RESTARTS", "PID", "SINCE", "LAST EXIT"), rows, indent="  ")
    return failing
