"""The command line of applications: ``execd app add|list|show``, ``execd fetch`` and
``execd submit --app NAME --input NAME=VALUE...``.

``--input NAME=VALUE`` gives a value (parsed by the engine for int, float and bool inputs);
``--input NAME=@PATH`` gives a file input (the path is made absolute here; ``--link NAME``
stages it as a link instead of a copy); ``--input NAME=@@TEXT`` gives the value ``@TEXT``.
``--split JSON`` gives a splitter, e.g. ``--split '{"input": "n", "range": [1, 51]}'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from execution_engine.apps.definition import load_definition
from execution_engine.apps.outputs import fetch_outputs
from execution_engine.apps.registry import AppRegistry
from execution_engine.cli import (
    EXIT_FAIL,
    EXIT_OK,
    as_json,
    env_options,
    find_job,
    open_store,
)
from execution_engine.config import EngineConfig
from execution_engine.errors import ConfigError, ExecdError
from execution_engine.jobdoc import new_job_document
from execution_engine.states import ENDED_STATES
from execution_engine.store import utcnow


# ---------------------------------------------------------------------- parser
def add_submit_app_options(parser: argparse.ArgumentParser) -> None:
    """``execd submit`` options for application jobs."""
    group = parser.add_argument_group("application jobs (instead of a command)")
    group.add_argument("--app", metavar="NAME", help="run this stored application")
    group.add_argument("--app-version", type=int, metavar="N", help="its version (default: "
                       "the latest when the job is built)")
    group.add_argument("--input", action="append", metavar="NAME=VALUE", help="an input "
                       "value; NAME=@PATH for a file, NAME=@@TEXT for a value starting with @")
    group.add_argument("--link", action="append", metavar="NAME", help="stage this file "
                       "input as a symbolic link, not a copy")
    group.add_argument("--split", metavar="JSON", help='a splitter, e.g. \'{"input": "n", '
                       '"range": [1, 51]}\' (docs/applications.md)')


def add_app_commands(sub: Any) -> None:
    """The ``app`` and ``fetch`` commands (``sub`` is the subparsers of ``execd``)."""
    app = sub.add_parser("app", help="application definitions: add, list, show")
    app_sub = app.add_subparsers(dest="app_cmd", required=True, metavar="ACTION")
    p = app_sub.add_parser("add", help="check an application folder and store it as a new "
                                       "version")
    p.add_argument("folder", help="the folder holding app.ini and the templates")
    p.set_defaults(func=cmd_app_add)
    p = app_sub.add_parser("list", help="stored applications (latest versions)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_app_list)
    p = app_sub.add_parser("show", help="one stored application")
    p.add_argument("name")
    p.add_argument("--version", type=int, dest="app_version", metavar="N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_app_show)

    p = sub.add_parser("fetch", help="copy a job's outputs into a folder, verified")
    p.add_argument("job")
    p.add_argument("dest", help="destination folder (made if missing)")
    p.add_argument("--mark", action="store_true", help="once all are verified, mark the "
                   "outputs fetched on the job")
    p.set_defaults(func=cmd_fetch)


# ---------------------------------------------------------------------- submit
def parse_inputs(items: list[str], links: list[str]) -> list[dict[str, Any]]:
    """``--input`` arguments as job inputs."""
    inputs: list[dict[str, Any]] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"submit: --input {item!r} is not NAME=VALUE")
        if value.startswith("@@"):
            inputs.append({"name": name, "value": value[1:]})
        elif value.startswith("@"):
            inputs.append({"name": name, "type": "file", "path": str(Path(value[1:]).absolute()),
                           "action": "LINK" if name in links else "COPY"})
        else:
            inputs.append({"name": name, "value": value})
    unknown = set(links) - {i["name"] for i in inputs if "path" in i}
    if unknown:
        raise ConfigError(f"submit: --link {', '.join(sorted(unknown))}: not a file input "
                          "given with NAME=@PATH")
    return inputs


def cmd_submit_app(config: EngineConfig, args: argparse.Namespace) -> int:
    """``execd submit --app NAME ...``: insert an application job; prints its id."""
    command = [a for a in args.command if a != "--"]
    if command:
        raise ConfigError("submit: give either --app or a command, not both")
    app: dict[str, Any] = {"name": args.app}
    if args.app_version is not None:
        app["version"] = args.app_version
    doc = new_job_document(app=app, name=args.name, owner=args.owner, project=args.project,
                           environment=env_options(args.env),
                           notify=False if args.no_notify else None)
    doc["inputs"] = parse_inputs(args.input or [], args.link or [])
    if args.split:
        try:
            doc["splitter"] = json.loads(args.split)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"submit: --split is not JSON: {exc}") from exc
    store = open_store(config)
    try:
        AppRegistry(store.db).get(args.app, args.app_version)  # fail now, not at build time
        job_id = store.insert(doc)
    finally:
        store.close()
    print(job_id)
    return EXIT_OK


# ---------------------------------------------------------------------- app
def cmd_app_add(config: EngineConfig, args: argparse.Namespace) -> int:
    folder = Path(args.folder).resolve()
    definition = load_definition(folder)
    store = open_store(config)
    try:
        stored, added = AppRegistry(store.db).add(definition, source=str(folder))
    finally:
        store.close()
    if added:
        print(f"added application {stored.name} version {stored.version}")
    else:
        print(f"application {stored.name} version {stored.version} is already this "
              "definition: nothing added")
    return EXIT_OK


def cmd_app_list(config: EngineConfig, args: argparse.Namespace) -> int:
    store = open_store(config)
    try:
        rows = AppRegistry(store.db).latest_of_each()
    finally:
        store.close()
    if args.json:
        print(as_json(rows))
        return EXIT_OK
    table = [("NAME", "VERSION", "VERSIONS", "LABEL")] + [
        (r["name"], str(r["version"]), str(r["versions"]), str(r.get("label") or "")[:50])
        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_app_show(config: EngineConfig, args: argparse.Namespace) -> int:
    store = open_store(config)
    try:
        stored = AppRegistry(store.db).get(args.name, args.app_version)
    finally:
        store.close()
    definition = stored.definition
    if args.json:
        print(as_json({"version": stored.version, "digest": stored.digest,
                       "added_at": stored.added_at, "source": stored.source,
                       **definition.to_doc()}))
        return EXIT_OK
    print(f"application {definition.name} version {stored.version}: {definition.label}")
    if definition.description:
        print(f"  {definition.description}")
    if stored.added_at is not None:
        print(f"  added {stored.added_at:%Y-%m-%d %H:%M:%S} from {stored.source or '-'}")
    print("  inputs:")
    for spec in definition.inputs:
        constraints = []
        if spec.required:
            constraints.append("required")
        if spec.default is not None:
            constraints.append(f"default {spec.default!r}")
        if spec.minimum is not None:
            constraints.append(f"min {spec.minimum!r}")
        if spec.maximum is not None:
            constraints.append(f"max {spec.maximum!r}")
        if spec.regex is not None:
            constraints.append(f"regex {spec.regex!r}")
        if spec.choices:
            constraints.append("one of " + ", ".join(spec.choices))
        print(f"    {spec.name} ({spec.type}) {spec.label}"
              + (f": {'; '.join(constraints)}" if constraints else ""))
    if not definition.inputs:
        print("    (none)")
    print(f"  outputs: {', '.join(definition.outputs) or '(none)'}")
    print(f"  phases: {', '.join(definition.templates)}")
    print(f"  environments: {', '.join(f'env/{k}.sh' for k in definition.environments)}"
          if definition.environments else "  environments: (none)")
    return EXIT_OK


# ---------------------------------------------------------------------- fetch
def cmd_fetch(config: EngineConfig, args: argparse.Namespace) -> int:
    """Copy a job's listed outputs into DEST, each verified before it is renamed into place;
    with ``--mark``, mark them fetched once all are there. Exit 1 if any could not be."""
    store = open_store(config)
    try:
        doc = find_job(store, args.job)
        if doc.get("state") not in {s.value for s in ENDED_STATES}:
            raise ExecdError(f"job {doc['_id']} has not ended ({doc.get('state')}): its "
                             "outputs are listed when it ends")
        outputs = [o for o in doc.get("outputs") or [] if not o.get("truncated")]
        if not outputs:
            print(f"job {doc['_id']} has no outputs")
            return EXIT_OK
        if not doc.get("job_dir"):
            raise ExecdError(f"job {doc['_id']} has no job directory")
        dest = Path(args.dest)
        report = fetch_outputs(Path(doc["job_dir"]), outputs, dest)
        for problem in report.problems:
            print(f"execd: {problem}", file=sys.stderr)
        already = f" ({len(report.present)} already there)" if report.present else ""
        print(f"fetched {len(report.fetched)} of {len(outputs)} outputs of job {doc['_id']} "
              f"into {dest}{already}")
        if report.problems:
            return EXIT_FAIL
        if args.mark:
            now = utcnow()
            store.jobs.update_one(
                {"_id": doc["_id"], "state": doc["state"]},
                {"$set": {"outputs.$[out].fetched_at": now, "outputs_fetched_at": now}},
                array_filters=[{"out.path": {"$in": report.fetched}}],
            )
            print(f"marked {len(report.fetched)} outputs fetched")
    finally:
        store.close()
    return EXIT_OK
