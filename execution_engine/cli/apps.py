"""Application commands: ``execd app add|list|show``, and the ``execd submit`` options of
application jobs (``--app NAME --input NAME=VALUE...``).

``--input NAME=VALUE`` gives a value (parsed by the engine for int, float and bool inputs);
``--input NAME=@PATH`` gives a file input (the path is made absolute here; ``--link NAME``
stages it as a link instead of a copy); ``--input NAME=@@TEXT`` gives the value ``@TEXT``.
``--split JSON`` gives a splitter, e.g. ``--split '{"input": "n", "range": [1, 51]}'``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from execution_engine.apps.definition import AppDefinition, load_definition
from execution_engine.apps.registry import AppRegistry
from execution_engine.cli.common import EXIT_OK, as_json, opened_store, print_table
from execution_engine.config import EngineConfig
from execution_engine.errors import ConfigError


def add_commands(sub: Any) -> None:
    """Add the ``app`` command to ``sub``, the subparsers of ``execd``."""
    app = sub.add_parser("app", help="application definitions: add, list, show")
    app_sub = app.add_subparsers(dest="app_cmd", required=True, metavar="ACTION")
    p = app_sub.add_parser("add", help="check an application folder and store it as a new "
                                       "version")
    p.add_argument("folder", help="the folder holding app.ini and the templates")
    p.set_defaults(func=cmd_app_add)
    p = app_sub.add_parser("list", help="stored applications (latest versions; an invalid "
                                        "one is marked with its reason)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_app_list)
    p = app_sub.add_parser("show", help="one stored application")
    p.add_argument("name")
    p.add_argument("--version", type=int, dest="app_version", metavar="N")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_app_show)


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


def parse_split(text: str | None) -> dict[str, Any] | None:
    """``--split JSON`` as a splitter (None without it)."""
    if not text:
        return None
    try:
        splitter = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"submit: --split is not JSON: {exc}") from exc
    if not isinstance(splitter, dict):
        raise ConfigError("submit: --split is a JSON object, e.g. '{\"input\": \"n\", "
                          "\"range\": [1, 51]}'")
    return splitter


def cmd_app_add(config: EngineConfig, args: argparse.Namespace) -> int:
    folder = Path(args.folder).resolve()
    definition = load_definition(folder)
    with opened_store(config) as store:
        stored, added = AppRegistry(store.db).add(definition, source=str(folder))
    if added:
        print(f"added application {stored.name} version {stored.version}")
    else:
        print(f"application {stored.name} version {stored.version} is already this "
              "definition: nothing added")
    return EXIT_OK


def cmd_app_list(config: EngineConfig, args: argparse.Namespace) -> int:
    with opened_store(config) as store:
        rows = AppRegistry(store.db).latest_of_each()
    if args.json:
        print(as_json(rows))
        return EXIT_OK
    print_table(("NAME", "VERSION", "VERSIONS", "LABEL"), [
        (str(r["name"]), str(r["version"]), str(r["versions"]),
         str(r.get("label") or "")[:50] if r.get("valid", True)
         else f"INVALID: {r.get('problem')}") for r in rows])
    return EXIT_OK


def cmd_app_show(config: EngineConfig, args: argparse.Namespace) -> int:
    with opened_store(config) as store:
        stored = AppRegistry(store.db).get(args.name, args.app_version)
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
    print_inputs(definition)
    print(f"  outputs: {', '.join(definition.outputs) or '(none)'}")
    print(f"  phases: {', '.join(definition.templates)}")
    print(f"  environments: {', '.join(f'env/{k}.sh' for k in definition.environments)}"
          if definition.environments else "  environments: (none)")
    return EXIT_OK


def print_inputs(definition: AppDefinition) -> None:
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
