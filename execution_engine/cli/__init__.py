"""The ``execd`` command line.

Daemon commands (:mod:`.daemon`): ``start``, ``stop``, ``reload``, ``status`` (LSB exit codes: 0
running, 1 running but degraded or dead with a pid file left, 3 not running), ``run``
(foreground, for systemd and containers). Job commands (:mod:`.jobs`, on the client library):
``submit``, ``jobs``, ``show``, ``wait``, ``kill``, ``hold``, ``release``, ``resubmit``,
``fetch``. Routing (:mod:`.routing`): ``route``, ``systems``. Applications (:mod:`.apps`):
``app add|list|show``.

Every command takes ``-c FILE`` (else ``$EXECD_CONFIG``, else ``/etc/execd/execd.ini``, else
built-in defaults). Errors are printed as ``execd: <what is wrong>`` with exit status 2 for usage
and configuration errors and 1 for the rest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pymongo.errors import PyMongoError

from execution_engine import __version__
from execution_engine.cli import apps, daemon, jobs, routing
from execution_engine.cli.common import EXIT_FAIL, EXIT_USAGE, mongodb_uri
from execution_engine.config import EngineConfig, load_config
from execution_engine.errors import ConfigError, ExecdError
from execution_engine.mongoaccess import describe_database_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="execd", description="execd: a job execution engine daemon.")
    parser.add_argument("-c", "--config", help="configuration file (default: $EXECD_CONFIG, "
                        "else /etc/execd/execd.ini, else built-in defaults)")
    parser.add_argument("--version", action="version", version=f"execd {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    daemon.add_commands(sub)
    jobs.add_commands(sub)
    routing.add_commands(sub)
    apps.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config: EngineConfig | None = None
    try:
        try:
            config = load_config(args.config)
        except ConfigError:
            if not getattr(args, "lenient_config", False):
                raise
            code: int = args.func(None, args)
            return code
        code = args.func(config, args)
        return code
    except ConfigError as exc:
        print(f"execd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PyMongoError as exc:
        # In words naming the server (password redacted), the user and the database.
        uri = config.mongodb.uri if config is not None else ""
        database = config.mongodb.database if config is not None else "?"
        print(f"execd: {describe_database_error(exc, uri, database)}", file=sys.stderr)
        return EXIT_FAIL
    except (ExecdError, OSError) as exc:
        print(f"execd: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main", "mongodb_uri"]
