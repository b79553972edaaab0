"""Typed inputs: turning what a job gives into checked values, every problem reported at once.

A job gives its inputs in the HPC Gridserver task-input shape, a list of
``{"name", "type"?, "value"}`` and, for files, ``{"name", "type": "file", "path", "action"?,
"as"?}``. Each is checked against the application's declaration of it: type, constraints,
required or not, and for files that the source exists, is a regular file and can be read, and
that the name it gets in the job directory cannot escape it.

Strings are accepted for ``int``, ``float`` and ``bool`` and parsed strictly (what a web form or
``execd submit --input`` sends); ``bool`` accepts true/false, yes/no, on/off, 1/0.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from execution_engine.apps.staging import target_problem

if TYPE_CHECKING:
    from execution_engine.apps.definition import AppDefinition, InputSpec

INPUT_TYPES = ("int", "float", "string", "bool", "choice", "file")
ACTIONS = ("COPY", "LINK")
_INT = re.compile(r"^[+-]?[0-9]+$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_INT64 = 2**63
MAX_TEXT = 65536
"""Characters a string value may have at most (it is written into the job script)."""


@dataclass(frozen=True)
class FileValue:
    """A file input: where it comes from, the name it gets in the job directory, and how."""

    source: Path
    target: str
    action: str = "COPY"

    def as_input(self, name: str) -> dict[str, Any]:
        """The job-document form of this value."""
        return {"name": name, "type": "file", "path": str(self.source), "action": self.action,
                "as": self.target}


def _as_int(value: Any) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT.match(value.strip()):
        number = int(value.strip())
    if number is None:
        raise ValueError(f"{value!r} is not an integer")
    if not -_INT64 <= number < _INT64:  # it is stored in MongoDB (subjobs)
        raise ValueError(f"{value!r} is out of the 64-bit integer range")
    return number


def _as_float(value: Any) -> float:
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value.strip())
    if number is None:
        raise ValueError(f"{value!r} is not a number")
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{value!r} is not a boolean (true/false, yes/no, on/off, 1/0)")


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    if "\0" in value:
        raise ValueError("contains a NUL character")
    if len(value) > MAX_TEXT:
        raise ValueError(f"is {len(value)} characters long, more than {MAX_TEXT}")
    return value


_COERCE: dict[str, Callable[[Any], Any]] = {
    "int": _as_int, "float": _as_float, "bool": _as_bool, "string": _as_text,
    "choice": _as_text,
}


def coerce(kind: str, value: Any) -> Any:
    """``value`` as the Python value of an input of type ``kind``; ValueError saying why not.
    ``choice`` values are strings here (membership is a constraint)."""
    if kind not in _COERCE:
        raise ValueError(f"no value for an input of type {kind!r}")
    return _COERCE[kind](value)


def constraint_problems(spec: InputSpec, value: Any) -> list[str]:
    """How a value of the right type breaks the input's constraints."""
    problems = []
    if spec.type in ("int", "float"):
        if spec.minimum is not None and value < spec.minimum:
            problems.append(f"{value!r} is below the minimum {spec.minimum!r}")
        if spec.maximum is not None and value > spec.maximum:
            problems.append(f"{value!r} is above the maximum {spec.maximum!r}")
    if spec.regex is not None and not re.fullmatch(spec.regex, value):
        problems.append(f"{value!r} does not match {spec.regex!r}")
    if spec.type == "choice" and value not in spec.choices:
        problems.append(f"{value!r} is not one of {', '.join(map(repr, spec.choices))}")
    return problems


def check_value(spec: InputSpec, value: Any) -> tuple[Any, list[str]]:
    """``value`` checked for ``spec`` (not a file input): the typed value and its problems."""
    try:
        typed = coerce(spec.type, value)
    except ValueError as exc:
        return None, [str(exc)]
    return typed, constraint_problems(spec, typed)


def as_text(value: Any) -> str:
    """A checked value as it is substituted (before quoting); for a file, its name in the job
    directory (the builder substitutes the absolute path)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, FileValue):
        return value.target
    return str(value)


def source_problem(path: Path, *, directory: bool = False,
                   allowed_dirs: Sequence[Path] = ()) -> str | None:
    """Why ``path`` cannot be staged as a file input (or, ``directory``, split per file).

    With ``allowed_dirs`` (``[engine] input_dirs``), the path, links resolved, must lie inside
    one of them: a daemon running as root would otherwise copy any file of the host into a job.
    """
    if not path.is_absolute():
        return f"path {str(path)!r} is not absolute"
    if "\0" in str(path):
        return "path holds a NUL character"
    return _outside_problem(path, allowed_dirs) or _readable_problem(path, directory)


def _outside_problem(path: Path, allowed_dirs: Sequence[Path]) -> str | None:
    if not allowed_dirs:
        return None
    real = path.resolve()
    if any(real.is_relative_to(d.resolve()) for d in allowed_dirs):
        return None
    return (f"{path} is outside the folders file inputs may come from "
            f"([engine] input_dirs: {', '.join(str(d) for d in allowed_dirs)})")


def _readable_problem(path: Path, directory: bool) -> str | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    wanted = "a directory" if directory else "a regular file"
    if directory != stat.S_ISDIR(info.st_mode) or not (directory or stat.S_ISREG(info.st_mode)):
        return f"{path} is not {wanted}"
    try:  # open it for real: permissions, ACLs and mounts all have their say
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (os.O_DIRECTORY if directory else 0))
    except OSError as exc:
        return f"{path} is not readable: {exc.strerror}"
    os.close(fd)
    return None


@dataclass
class CheckedInputs:
    """The outcome of checking a job's inputs: typed values by input name, and problems."""

    values: dict[str, Any]
    problems: list[str]
    split_source: FileValue | None = None
    """The split input's file or directory (for splitters by files or lines)."""


def check_inputs(
    app: AppDefinition,
    given: Sequence[Any],
    *,
    split_input: str | None = None,
    split_directory: bool = False,
    reserved_targets: Sequence[str] = (),
    allowed_dirs: Sequence[Path] = (),
) -> CheckedInputs:
    """Check ``given`` (a job's ``inputs``) against ``app``; defaults fill in what is missing.

    ``split_input`` names an input whose values come from a splitter: when ``split_directory`` it
    must be given and be a directory (split per file), else when it is a file input it must be
    given (split per lines), else it must not be given (values or a range).
    """
    checker = _Checker(app, split_input, split_directory, reserved_targets, allowed_dirs)
    for position, item in enumerate(given):
        checker.check(position, item)
    checker.fill_in()
    return CheckedInputs(checker.values, checker.problems, checker.split_source)


class _Checker:
    """The state of one :func:`check_inputs` call."""

    def __init__(self, app: AppDefinition, split_input: str | None, split_directory: bool,
                 reserved_targets: Sequence[str], allowed_dirs: Sequence[Path]) -> None:
        self.app = app
        self.allowed_dirs = allowed_dirs
        self.split_input = split_input
        self.split_directory = split_directory
        self.reserved = reserved_targets
        self.values: dict[str, Any] = {}
        self.problems: list[str] = []
        self.targets: dict[str, str] = {}
        self.seen: set[str] = set()
        self.split_source: FileValue | None = None

    def check(self, position: int, item: Any) -> None:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            self.problems.append(f"inputs.{position}: not an object with a name")
            return
        name = item["name"]
        spec = self.app.input(name)
        if spec is None:
            known = ", ".join(i.name for i in self.app.inputs) or "none"
            self.problems.append(f"input {name!r}: application {self.app.name} has no such "
                                 f"input (known: {known})")
            return
        where = f"input {name!r}" + (f" ({spec.label})" if spec.label != name else "")
        problem = self.shape_problem(spec, item)
        if problem is not None:
            self.problems.append(f"{where}: {problem}")
            return
        self.seen.add(name)
        if spec.type == "file":
            self.check_file(where, name, item)
            return
        typed, bad = check_value(spec, item["value"])
        self.problems.extend(f"{where}: {reason}" for reason in bad)
        self.values[name] = typed

    def shape_problem(self, spec: InputSpec, item: Mapping[str, Any]) -> str | None:
        """What is wrong with an input item before its value is looked at."""
        declared = item.get("type")
        if spec.name in self.seen:
            return "given more than once"
        if declared is not None and declared != spec.type:
            return f"given as type {declared!r}, the application declares {spec.type!r}"
        if spec.name == self.split_input and spec.type != "file":
            return "its values come from the splitter; do not give it"
        if spec.type == "file":
            return "a file input gives path (and action), not value" if "value" in item \
                else None
        if "path" in item or "action" in item or "as" in item:
            return "path, action and as are for file inputs"
        return None if "value" in item else "no value"

    def check_file(self, where: str, name: str, item: Mapping[str, Any]) -> None:
        path = item.get("path")
        action = item.get("action", "COPY")
        if not isinstance(path, str) or not path:
            self.problems.append(f"{where}: no path")
            return
        if "\0" in path:
            self.problems.append(f"{where}: path holds a NUL character")
            return
        if action not in ACTIONS:
            self.problems.append(f"{where}: action {action!r} is not COPY or LINK")
            return
        directory = self.split_directory and name == self.split_input
        reason = source_problem(Path(path), directory=directory, allowed_dirs=self.allowed_dirs)
        if reason is not None:
            self.problems.append(f"{where}: {reason}")
            return
        target = item.get("as", Path(path).name)
        reason = target_problem(target, self.reserved) if isinstance(target, str) else \
            f"{target!r} is not a file name"
        if reason is not None:
            self.problems.append(f"{where}: cannot be staged as {target!r}: {reason}")
            return
        value = FileValue(Path(path), target, action)
        if name == self.split_input:
            self.split_source = value
        elif target in self.targets:
            self.problems.append(f"{where}: staged as {target!r} like input "
                                 f"{self.targets[target]!r}")
        else:
            self.targets[target] = name
            self.values[name] = value

    def fill_in(self) -> None:
        """Defaults for inputs not given; a problem for each required one."""
        for spec in self.app.inputs:
            if spec.name in self.seen or spec.name == self.split_input:
                continue
            if spec.default is not None:
                self.values[spec.name] = spec.default
            elif spec.required:
                label = f" ({spec.label})" if spec.label != spec.name else ""
                self.problems.append(f"input {spec.name!r}{label}: required, not given")
            else:
                self.values[spec.name] = None
        split = self.split_input
        if split is not None and split not in self.seen and _is_file(self.app, split):
            self.problems.append(f"input {split!r}: the splitter splits it, but it is not "
                                 "given")


def _is_file(app: AppDefinition, name: str) -> bool:
    spec = app.input(name)
    return spec is not None and spec.type == "file"
