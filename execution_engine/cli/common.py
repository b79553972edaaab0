"""What every ``execd`` command shares: exit codes, the one way to open the database, output
formatting and option parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bson import json_util

from execution_engine.client import Client, database_uri
from execution_engine.config import EngineConfig
from execution_engine.errors import ConfigError
from execution_engine.store import JobStore

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
LSB_RUNNING, LSB_DEAD_PID_FILE, LSB_NOT_RUNNING = 0, 1, 3
EXIT_TIMEOUT = 124
"""As timeout(1) exits."""

APP_NAME = "execd-cli"


def mongodb_uri(config: EngineConfig) -> str:
    """The URI client commands use: the configured one, else the running embedded mongod's
    (raises NotRunning when there is none)."""
    return database_uri(config)


@contextmanager
def opened_client(config: EngineConfig, *, uri: str | None = None,
                  timeout: float | None = None) -> Iterator[Client]:
    """A :class:`Client` of ``config``'s database (or of ``uri``), closed on leaving."""
    client = Client(uri, config=config, database=config.mongodb.database, timeout=timeout,
                    app_name=APP_NAME)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def opened_store(config: EngineConfig, *, uri: str | None = None,
                 timeout: float | None = None) -> Iterator[JobStore]:
    """The :class:`JobStore` of ``config``'s database (or of ``uri``), closed on leaving: for
    the commands that read more than jobs (applications, daemons)."""
    with opened_client(config, uri=uri, timeout=timeout) as client:
        yield client.store


def as_json(doc: Any) -> str:
    """``doc`` as indented relaxed Extended JSON (dates and ids readable)."""
    return json.dumps(json.loads(json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS)),
                      indent=2)


def fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-"


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Left-aligned columns as wide as their widest cell."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
              .rstrip())


def env_options(items: list[str] | None) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a mapping; a malformed one is a usage error."""
    env = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"submit: --env {item!r} is not NAME=VALUE")
        env[key] = value
    return env
