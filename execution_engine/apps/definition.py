"""An application definition: a folder with ``app.ini``, phase templates and environment snippets.

::

    wordcount/
        app.ini            name, label, description, outputs, [inputs], [templates]
        prolog.sh          optional
        execute.sh         required
        epilog.sh          optional
        env/default.sh     optional: the environment on any execution system
        env/<system>.sh    optional: the environment on that execution system (module loads,
                           PATH, the application's home there)

``app.ini`` is read with configobj (no interpolation); values holding a comma must be quoted.
The format is documented in ``docs/applications.md``. Loading checks everything and reports
every problem at once, each naming the file, the field and the reason. A loaded definition is
self-contained (templates and snippets are read in), so that storing it in MongoDB makes it
available to every daemon.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configobj import ConfigObj, ConfigObjError, Section

from execution_engine.apps.inputs import INPUT_TYPES, check_value, coerce
from execution_engine.apps.markup import ENGINE_MARKUPS, markups_in, quoted_markups
from execution_engine.apps.staging import target_problem
from execution_engine.errors import ExecdError

PHASES = ("prolog", "execute", "epilog")
DEFINITION_FILE = "app.ini"
ENV_DIR = "env"
DEFAULT_ENV = "default"
APP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}\Z")
INPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}\Z")
SYSTEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
MAX_TEXT_BYTES = 256 * 1024
"""Bytes a template or snippet may have at most (definitions are stored in MongoDB)."""

_TOP_KEYS = ("name", "label", "description", "outputs")
_INPUT_KEYS = ("type", "label", "required", "default", "min", "max", "regex", "choices")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class DefinitionError(ExecdError):
    """An application definition is refused; ``problems`` name the file, field and reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"application definition {source} refused:\n  "
                         + "\n  ".join(problems))


@dataclass(frozen=True)
class InputSpec:
    """One declared input."""

    name: str
    type: str
    label: str
    required: bool = False
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    regex: str | None = None
    choices: tuple[str, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        doc = {"name": self.name, "type": self.type, "label": self.label,
               "required": self.required, "default": self.default, "min": self.minimum,
               "max": self.maximum, "regex": self.regex, "choices": list(self.choices)}
        return {k: v for k, v in doc.items() if v is not None and v != []}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> InputSpec:
        return cls(doc["name"], doc["type"], doc.get("label", doc["name"]),
                   bool(doc.get("required", False)), doc.get("default"), doc.get("min"),
                   doc.get("max"), doc.get("regex"), tuple(doc.get("choices", ())))


@dataclass(frozen=True)
class AppDefinition:
    """A checked application definition, templates and snippets included."""

    name: str
    label: str
    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    templates: Mapping[str, str]
    """Phase name -> shell text; ``execute`` always, ``prolog``/``epilog`` when declared."""
    environments: Mapping[str, str] = field(default_factory=dict)
    """Execution system name (or ``default``) -> environment snippet."""

    def input(self, name: str) -> InputSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def environment_for(self, system: str) -> tuple[str, str] | None:
        """The snippet for ``system``: ``(file, text)`` of ``env/<system>.sh``, else of
        ``env/default.sh``, else None."""
        for key in (system, DEFAULT_ENV):
            if key in self.environments:
                return f"{ENV_DIR}/{key}.sh", self.environments[key]
        return None

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "description": self.description,
                "inputs": [spec.to_doc() for spec in self.inputs],
                "outputs": list(self.outputs), "templates": dict(self.templates),
                "environments": dict(self.environments)}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AppDefinition:
        return cls(doc["name"], doc.get("label", doc["name"]), doc.get("description", ""),
                   tuple(InputSpec.from_doc(i) for i in doc.get("inputs", ())),
                   tuple(doc.get("outputs", ())), dict(doc["templates"]),
                   dict(doc.get("environments", {})))

    def digest(self) -> str:
        """A checksum of the whole definition: the same folder gives the same digest."""
        text = json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------- loading
def load_definition(folder: Path) -> AppDefinition:
    """Read and check the definition in ``folder``; raises DefinitionError naming every problem.
    """
    raw = _open_ini(folder)
    problems: list[str] = []
    reader = _Reader(problems)
    name = _check_top_level(raw, reader)
    inputs = _read_inputs(raw, reader)
    outputs = tuple(reader.listing(raw, "outputs", "outputs"))
    for pattern in outputs:
        reason = target_problem(pattern)
        if reason is not None:
            reader.problem("outputs", f"pattern {pattern!r}: {reason}")
    templates = _read_templates(folder, raw, reader)
    environments = _read_environments(folder, problems)
    declared = raw["inputs"].sections if isinstance(raw.get("inputs"), Section) else []
    known = set(declared) | set(ENGINE_MARKUPS)
    for phase, text in templates.items():
        _check_shell(f"{_template_file(raw, phase)}", text, known, "phase", problems)
    for system, text in environments.items():
        _check_shell(f"{ENV_DIR}/{system}.sh", text, known, "environment", problems)
    if problems:
        raise DefinitionError(str(folder), problems)
    return AppDefinition(name, reader.text(raw, "label") or name,
                         reader.text(raw, "description"), inputs, outputs, templates,
                         environments)


def _open_ini(folder: Path) -> ConfigObj:
    ini = folder / DEFINITION_FILE
    if not folder.is_dir():
        raise DefinitionError(str(folder), ["not a directory"])
    if not ini.is_file():
        raise DefinitionError(str(folder), [f"{DEFINITION_FILE}: missing"])
    try:
        return ConfigObj(str(ini), interpolation=False, encoding="utf-8", file_error=True)
    except ConfigObjError as exc:
        errors = getattr(exc, "errors", None) or [exc]
        raise DefinitionError(str(folder), [f"{DEFINITION_FILE}: {e}" for e in errors]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(str(folder), [f"{DEFINITION_FILE}: {exc}"]) from exc


def _check_top_level(raw: ConfigObj, reader: _Reader) -> str:
    """Unknown keys and sections, and the application's name (returned)."""
    for key in raw.scalars:
        if key not in _TOP_KEYS:
            reader.problem(key, f"unknown key (known: {', '.join(_TOP_KEYS)}; sections "
                                "[inputs], [templates])")
    for key in raw.sections:
        if key not in ("inputs", "templates"):
            reader.problem(f"[{key}]", "unknown section (known: [inputs], [templates])")
    name = reader.scalar(raw, "name", "name") or ""
    if not name:
        reader.problem("name", "required")
    elif not APP_NAME.match(name):
        reader.problem("name", f"{name!r} is not 1-64 letters, digits, '.', '_' or '-' "
                               "starting with a letter")
    return name


class _Reader:
    """Typed access to configobj values, recording problems as ``app.ini: field: reason``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def scalar(self, section: Section, key: str, where: str) -> str | None:
        value = section.get(key)
        if value is None:
            return None
        if isinstance(value, list):
            self.problems.append(f"{DEFINITION_FILE}: {where}: holds a comma; put the value in "
                                 "quotes")
            return None
        if isinstance(value, Section):
            self.problems.append(f"{DEFINITION_FILE}: {where}: a section, not a value")
            return None
        return str(value)

    def text(self, section: Section, key: str) -> str:
        """Free text: an unquoted comma is kept (configobj would have made a list)."""
        value = section.get(key)
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return self.scalar(section, key, key) or ""

    def listing(self, section: Section, key: str, where: str) -> list[str]:
        value = section.get(key)
        if value is None:
            return []
        if isinstance(value, Section):
            self.problems.append(f"{DEFINITION_FILE}: {where}: a section, not a list")
            return []
        items = value if isinstance(value, list) else [value]
        return [str(item) for item in items if str(item).strip()]

    def boolean(self, section: Section, key: str, where: str) -> bool:
        text = self.scalar(section, key, where)
        if text is None:
            return False
        if text.strip().lower() in _TRUE | _FALSE:
            return text.strip().lower() in _TRUE
        self.problems.append(f"{DEFINITION_FILE}: {where}: {text!r} is not true or false")
        return False

    def problem(self, where: str, reason: str) -> None:
        self.problems.append(f"{DEFINITION_FILE}: {where}: {reason}")


def _read_inputs(raw: ConfigObj, reader: _Reader) -> tuple[InputSpec, ...]:
    section = raw.get("inputs")
    if section is None:
        return ()
    if not isinstance(section, Section):
        reader.problem("inputs", "must be a section ([inputs] with one [[name]] per input)")
        return ()
    for key in section.scalars:
        reader.problem(f"inputs.{key}", "inputs are sub-sections: [[name]]")
    return tuple(spec for name in section.sections
                 if (spec := _read_input(name, section[name], reader)) is not None)


def _read_input(name: str, section: Section, reader: _Reader) -> InputSpec | None:
    where = f"inputs.{name}"
    count = len(reader.problems)
    if not INPUT_NAME.match(name):
        reader.problem(where, "an input name is a letter then letters, digits or '_' (at most "
                              "64)")
    if name in ENGINE_MARKUPS:
        reader.problem(where, f"{name} is an engine markup (@@{name}@@); choose another name")
    for key in [*section.scalars, *section.sections]:
        if key not in _INPUT_KEYS:
            reader.problem(f"{where}.{key}", f"unknown key (known: {', '.join(_INPUT_KEYS)})")
    kind = reader.scalar(section, "type", f"{where}.type")
    if kind not in INPUT_TYPES:
        reader.problem(f"{where}.type", f"{kind!r} is not one of {', '.join(INPUT_TYPES)}"
                       if kind is not None else f"required (one of {', '.join(INPUT_TYPES)})")
        return None
    low, high = _read_bounds(section, kind, where, reader)
    regex = reader.scalar(section, "regex", f"{where}.regex")
    if regex is not None:
        if kind != "string":
            reader.problem(f"{where}.regex", f"only for string inputs, not {kind}")
        try:
            re.compile(regex)
        except re.error as exc:
            reader.problem(f"{where}.regex", f"{regex!r} is not a regular expression: {exc}")
    choices = _read_choices(section, kind, where, reader)
    spec = InputSpec(name, kind, reader.text(section, "label") or name,
                     reader.boolean(section, "required", f"{where}.required"), None, low, high,
                     regex, choices)
    text = reader.scalar(section, "default", f"{where}.default")
    if text is not None and len(reader.problems) == count:
        spec = _with_default(spec, text, f"{where}.default", reader)
    return spec if len(reader.problems) == count else None


def _read_choices(section: Section, kind: str, where: str, reader: _Reader
                  ) -> tuple[str, ...]:
    choices: tuple[str, ...] = ()
    if "choices" in section:
        choices = tuple(reader.listing(section, "choices", f"{where}.choices"))
        if kind != "choice":
            reader.problem(f"{where}.choices", f"only for choice inputs, not {kind}")
        elif len(set(choices)) != len(choices):
            reader.problem(f"{where}.choices", "a choice is listed twice")
    if kind == "choice" and not choices:
        reader.problem(f"{where}.choices", "required for a choice input (a list)")
    return choices


def _read_bounds(section: Section, kind: str, where: str, reader: _Reader
                 ) -> tuple[int | float | None, int | float | None]:
    bounds: dict[str, int | float | None] = {}
    for key in ("min", "max"):
        text = reader.scalar(section, key, f"{where}.{key}")
        bounds[key] = None
        if text is None:
            continue
        if kind not in ("int", "float"):
            reader.problem(f"{where}.{key}", f"only for int and float inputs, not {kind}")
            continue
        try:
            bounds[key] = coerce(kind, text)
        except ValueError as exc:
            reader.problem(f"{where}.{key}", str(exc))
    low, high = bounds["min"], bounds["max"]
    if low is not None and high is not None and low > high:
        reader.problem(where, f"min {low!r} is above max {high!r}")
    return low, high


def _with_default(spec: InputSpec, text: str, where: str, reader: _Reader) -> InputSpec:
    if spec.type == "file":
        reader.problem(where, "a file input has no default")
        return spec
    if spec.required:
        reader.problem(where, "a required input has no default (a default makes it optional)")
        return spec
    value, bad = check_value(spec, text)
    for reason in bad:
        reader.problem(where, reason)
    return InputSpec(spec.name, spec.type, spec.label, spec.required, value, spec.minimum,
                     spec.maximum, spec.regex, spec.choices)


def _template_file(raw: ConfigObj, phase: str) -> str:
    section = raw.get("templates")
    if isinstance(section, Section) and isinstance(section.get(phase), str):
        return str(section[phase])
    return f"{phase}.sh"


def _declared_templates(raw: ConfigObj, reader: _Reader) -> dict[str, str]:
    """The ``[templates]`` section: phase -> file name."""
    section = raw.get("templates")
    declared: dict[str, str] = {}
    if section is None:
        return declared
    if not isinstance(section, Section):
        reader.problem("templates", "must be a section")
        return declared
    for key in [*section.scalars, *section.sections]:
        if key not in PHASES:
            reader.problem(f"templates.{key}", f"unknown phase (known: {', '.join(PHASES)})")
            continue
        file_name = reader.scalar(section, key, f"templates.{key}")
        reason = target_problem(file_name) if file_name is not None else None
        if reason is not None:
            reader.problem(f"templates.{key}", f"{file_name!r}: {reason}")
        elif file_name is not None:
            declared[key] = file_name
    return declared


def _read_templates(folder: Path, raw: ConfigObj, reader: _Reader) -> dict[str, str]:
    declared = _declared_templates(raw, reader)
    templates: dict[str, str] = {}
    for phase in PHASES:
        file_name = declared.get(phase, f"{phase}.sh")
        path = folder / file_name
        if not path.is_file():
            if phase in declared:
                reader.problems.append(f"{file_name}: missing (templates.{phase})")
            elif phase == "execute":
                reader.problems.append(f"{file_name}: missing (the execute phase is required)")
            continue
        text = _read_text(path, file_name, reader.problems)
        if text is not None:
            templates[phase] = text
    return templates


def _read_environments(folder: Path, problems: list[str]) -> dict[str, str]:
    env_dir = folder / ENV_DIR
    if not env_dir.exists():
        return {}
    if not env_dir.is_dir():
        problems.append(f"{ENV_DIR}: not a directory")
        return {}
    environments = {}
    for path in sorted(env_dir.iterdir()):
        label = f"{ENV_DIR}/{path.name}"
        if path.suffix != ".sh" or not path.is_file():
            problems.append(f"{label}: not an environment snippet (env/<system name>.sh or "
                            "env/default.sh)")
            continue
        if not SYSTEM_NAME.match(path.stem):
            problems.append(f"{label}: {path.stem!r} cannot be an execution system name")
            continue
        text = _read_text(path, label, problems)
        if text is not None:
            environments[path.stem] = text
    return environments


def _read_text(path: Path, label: str, problems: list[str]) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.append(f"{label}: cannot be read: {exc.strerror}")
        return None
    if len(data) > MAX_TEXT_BYTES:
        problems.append(f"{label}: {len(data)} bytes, more than {MAX_TEXT_BYTES}")
        return None
    if b"\0" in data:
        problems.append(f"{label}: holds a NUL byte")
        return None
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        problems.append(f"{label}: not UTF-8 text: {exc}")
        return None


def _check_shell(label: str, text: str, known: set[str], kind: str, problems: list[str]) -> None:
    """Markups known and written bare, and valid ``sh`` syntax (as the job script holds it)."""
    for name, line in markups_in(text):
        if name not in known:
            problems.append(f"{label}: line {line}: unknown markup @@{name}@@ (inputs and "
                            f"{', '.join(sorted(ENGINE_MARKUPS))})")
    for name, line in quoted_markups(text):
        problems.append(f"{label}: line {line}: @@{name}@@ is inside quotes; write it bare, "
                        "the engine quotes every value")
    dummy = re.sub(r"@@[A-Za-z_][A-Za-z0-9_]*@@", "'x'", text)
    wrapped = f"(\n{dummy}\n)\n" if kind == "phase" else f"{{ :\n{dummy}\n}}\n"
    for candidate, shift in ((dummy, 0), (wrapped, 1)):
        error = shell_syntax_error(candidate, shift)
        if error is not None:
            problems.append(f"{label}: shell syntax error: {error}")
            break


def shell_syntax_error(text: str, line_shift: int = 0) -> str | None:
    """What ``sh -n`` says about ``text`` (line numbers less ``line_shift``), or None."""
    result = subprocess.run(["/bin/sh", "-n"], input=text, capture_output=True, text=True,
                            timeout=30, check=False)
    if result.returncode == 0:
        return None
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "refused"
    match = re.match(r"^(?:/bin/)?sh: (\d+): (.*)$", message)
    if match:
        return f"line {max(1, int(match.group(1)) - line_shift)}: {match.group(2)}"
    return message
