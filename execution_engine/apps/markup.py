"""``@@NAME@@`` markups: the one way values reach an application's shell text.

Every markup is replaced in a single pass (a value that itself contains ``@@X@@`` is never
expanded again) by the value shell-quoted, so that a value arrives in the application as one
literal word whatever characters it holds. A markup the engine does not know is an error, named.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping

MARKUP = re.compile(r"@@([A-Za-z_][A-Za-z0-9_]*)@@")
"""A markup: ``@@`` + a name (letters, digits, ``_``) + ``@@``."""

ENGINE_MARKUPS: Mapping[str, str] = {
    "JOB_ID": "the job id",
    "JOB_NAME": "the job name",
    "JOB_DIR": "the job directory (absolute)",
    "PROJECT": "the job's project",
    "OWNER": "the job's owner (empty when there is none)",
    "APP_NAME": "the application's name",
    "APP_VERSION": "the application version the job was built with",
    "SYSTEM": "the execution system the job was routed to",
    "CORES": "requirements.cores, or 1",
    "SUBJOB_INDEX": "the subjob's index in its split job (empty for other jobs)",
    "MASTER_DIR": "the split master's job directory, where shared inputs are (for other jobs: "
                  "the job directory)",
}
"""Markups the engine fills in for every job, with what they stand for."""


def markups_in(text: str) -> list[tuple[str, int]]:
    """Every markup name in ``text`` with its line number (1-based), in order."""
    found = []
    for match in MARKUP.finditer(text):
        found.append((match.group(1), text.count("\n", 0, match.start()) + 1))
    return found


def quoted_markups(text: str) -> list[tuple[str, int]]:
    """Markups written right inside quotes (``"@@X@@"``, ``'@@X@@'``): the engine quotes
    values itself, so such quotes would become part of the value."""
    found = []
    for match in MARKUP.finditer(text):
        before = text[match.start() - 1] if match.start() > 0 else ""
        after = text[match.end()] if match.end() < len(text) else ""
        if before in "'\"" and before and after == before:
            found.append((match.group(1), text.count("\n", 0, match.start()) + 1))
    return found


def substitute(text: str, values: Mapping[str, str],
               on_unknown: Callable[[str, int], None]) -> str:
    """``text`` with every known markup replaced by its value, shell-quoted; each unknown one
    is reported to ``on_unknown(name, line)`` and left as it is."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in values:
            return shlex.quote(values[name])
        on_unknown(name, text.count("\n", 0, match.start()) + 1)
        return match.group(0)

    return MARKUP.sub(replace, text)
