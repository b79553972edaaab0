"""Forging an application job's shell text: environment snippet, then prolog, execute, epilog.

The text becomes the ``body`` of the standard job script (:func:`~execution_engine.jobscript.
forge_script`), which exports the job's environment before it and records ``.execd/exit_code``
after it. Within the body:

* the environment snippet runs in the script's own shell (its ``module load``, ``PATH`` and
  variables reach every phase); its output goes to ``environment.stdout``/``.stderr``; the
  script then goes back to the job directory, wherever the snippet went (``cd $APP_HOME``);
* each phase runs in a subshell (an ``exit`` or ``cd`` in a template ends or stays in that
  phase), with stdin from ``/dev/null``, stdout and stderr into ``<phase>.stdout`` and
  ``<phase>.stderr``, its exit code into ``.execd/<phase>.exit_code``; it is started and waited
  for as a plain job's command is, so that a cancel reaches it (one that comes between two
  phases ends the job with 143 before the next one starts);
* the first step that fails (non-zero status) stops the job: its name goes into
  ``.execd/failed_phase`` and its code becomes the job's exit code.

Every ``@@NAME@@`` is replaced by its value shell-quoted (see :mod:`.markup`); a markup left
unknown is a build error naming the file and line.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from execution_engine.apps.definition import PHASES, AppDefinition
from execution_engine.apps.markup import substitute
from execution_engine.errors import AppError
from execution_engine.jobscript import NO_JOB_DIR_EXIT, run_waited
from execution_engine.systems.base import ENGINE_DIR, EXIT_CODE_NAME

ENVIRONMENT = "environment"
FAILED_PHASE_NAME = f"{ENGINE_DIR}/failed_phase"
_SLOT_CLOSED = "9>&-"  # the Local slot lock stays with the script, not with the application


_HOME = "execd_home"
"""The shell variable holding the job directory, to come back to after the snippet."""

_EXIT_GUARD = (
    # A snippet that calls exit would end the script before it records anything: record it
    # (in the job directory, wherever the snippet went).
    "trap 'execd_rc=$?; cd \"$" + _HOME + "\" || exit; [ -s " + EXIT_CODE_NAME + " ] || "
    "{ [ \"$execd_rc\" -ne 0 ] || execd_rc=1; echo " + ENVIRONMENT + " >" + FAILED_PHASE_NAME
    + "; echo \"$execd_rc\" >" + EXIT_CODE_NAME + "; }' EXIT\n"
)


def phase_exit_code_name(phase: str) -> str:
    return f"{ENGINE_DIR}/{phase}.exit_code"


class ForgeError(AppError):
    """Markups the engine cannot fill; ``problems`` name each file and line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _step(name: str, run: str) -> str:
    """The lines running one step when none failed before (``run`` sets ``execd_rc``), and
    recording how it ended."""
    return (
        f"# ---- {name}\n"
        f'if [ "$execd_rc" -eq 0 ]; then\n'
        f"{run}"
        f'echo "$execd_rc" >{phase_exit_code_name(name)}\n'
        f'[ "$execd_rc" -eq 0 ] || echo {name} >{FAILED_PHASE_NAME}\n'
        f"fi\n"
    )


def _redirected(name: str, text: str, opening: str, closing: str) -> str:
    """``text`` between ``opening`` and ``closing``, with the step's redirections."""
    if not text.endswith("\n"):
        text += "\n"
    return (f"{opening}\n{text}{closing} </dev/null >{name}.stdout 2>{name}.stderr "
            f"{_SLOT_CLOSED}")


def _phase(name: str, text: str) -> str:
    """A phase, in a subshell, run as a plain job's command is
    (:func:`~execution_engine.jobscript.run_waited`), so that a cancel reaches it exactly: one
    noted between two phases ends the job before the next one starts."""
    return _step(name, run_waited(_redirected(name, text, "(", ")"))
                 + "\nexecd_rc=$execd_code\n")


def _environment(text: str, job_dir: str) -> str:
    """The environment snippet, in the script's own shell (as a group), then back to
    ``job_dir``: the phases run there, and the step's records are written there."""
    return (f"{_HOME}={shlex.quote(job_dir)}\n{_EXIT_GUARD}"
            + _step(ENVIRONMENT, f"{_redirected(ENVIRONMENT, text, '{ :', '}')}\n"
                                 f"execd_rc=$?\n"
                                 f'cd "${_HOME}" || execd_rc={NO_JOB_DIR_EXIT}\n')
            + "trap - EXIT\n")


def forge_body(app: AppDefinition, markups: Mapping[str, str], system: str) -> str:
    """The shell text of the job's steps with every markup filled in; raises ForgeError."""
    problems: list[str] = []
    parts = ["execd_rc=0\n"]
    environment = app.environment_for(system)
    if environment is not None:
        label, text = environment

        def unknown_env(name: str, line: int, label: str = label) -> None:
            problems.append(f"{label}: line {line}: unknown markup @@{name}@@")

        parts.append(f"# environment snippet {label} of {app.name}\n")
        parts.append(_environment(substitute(text, markups, unknown_env), markups["JOB_DIR"]))
    for phase in PHASES:
        template = app.templates.get(phase)
        if template is None:
            continue
        label = f"template {phase}"

        def unknown(name: str, line: int, label: str = label) -> None:
            problems.append(f"{label}: line {line}: unknown markup @@{name}@@")

        parts.append(_phase(phase, substitute(template, markups, unknown)))
    if problems:
        raise ForgeError(problems)
    parts.append('(exit "$execd_rc")\n')
    return "".join(parts)
