"""The stateless mapping modes: a map file, a regular expression, a plugin hook.

Each only names an account; :class:`~execution_engine.identity.resolver.AccountResolver` vets it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from execution_engine.identity.config import ACCOUNT_NAME, IdentitySection, template_fields
from execution_engine.identity.resolver import AccountResolver


class MapFileResolver(AccountResolver):
    """``mapping = map``: a static file of ``owner account`` lines.

    The file is read with the configuration (``IdentitySection.map_table``): a reload reads it
    again, so an edited file applies to the jobs mapped after it and never half-way through
    one, and a broken file is refused with the configuration.
    """

    def __init__(self, section: IdentitySection) -> None:
        super().__init__(section)
        if section.map_file is None:
            raise ValueError("[identity] map_file: empty, but mapping = map needs one")
        self.path = section.map_file
        self.table = section.map_table

    def describe(self) -> str:
        return f"map file {self.path}"

    def _map(self, owner: str, job: Mapping[str, Any]) -> str:
        try:
            return self.table[owner]
        except KeyError:
            raise self._refuse(owner, f"not in {self.describe()}") from None


def parse_map(text: str, path: Path) -> Mapping[str, str]:
    """The ``owner -> account`` table of the map file ``path`` (read by the configuration,
    :func:`execution_engine.identity.config.read_guarded_file`), whose content is ``text``:
    one ``owner account`` pair a line (whitespace separated), ``#`` comments and blank lines
    ignored.

    Raises ValueError naming ``file:line`` for a line that is not exactly two words or that
    maps an owner a second time (which of the two would win is not something an administrator
    should have to guess)."""
    table: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise ValueError(f"{path}:{number}: expected 'owner account', got {line.strip()!r}")
        owner, account = words
        if owner in table:
            raise ValueError(f"{path}:{number}: owner {owner!r} is already mapped on line "
                             f"{first_seen[owner]}")
        table[owner] = account
        first_seen[owner] = number
    return MappingProxyType(table)


class PatternResolver(AccountResolver):
    """``mapping = pattern``: the owner must match ``pattern`` as a whole; the account is the
    ``account`` template filled with the pattern's named groups
    (``(?P<user>[a-z]+)@example\\.org`` and ``{user}``: ``alice@example.org`` runs as
    ``alice``)."""

    def __init__(self, section: IdentitySection) -> None:
        super().__init__(section)
        if not section.pattern:
            raise ValueError("[identity] pattern: empty, but mapping = pattern needs one")
        self.pattern = re.compile(section.pattern)
        self.template = section.account
        self.fields = template_fields(section.account)

    def describe(self) -> str:
        return f"pattern {self.pattern.pattern!r} -> {self.template!r}"

    def _map(self, owner: str, job: Mapping[str, Any]) -> str:
        match = self.pattern.fullmatch(owner)
        if match is None:
            raise self._refuse(owner, f"it does not match {self.describe()}")
        groups = match.groupdict()
        unmatched = sorted(name for name in self.fields if groups.get(name) is None)
        if unmatched:  # an optional group that took no part: "None" is no account name
            raise self._refuse(owner, f"group {', '.join(unmatched)} of {self.describe()} "
                                      f"matched nothing")
        name = self.template.format(**groups)
        # The owner wrote part of this name: only plain account names get through (no "/",
        # no spaces, no leading "-" for a command to take as an option).
        if not ACCOUNT_NAME.fullmatch(name):
            raise self._refuse(owner, f"{self.describe()} made {name!r}, which is not an "
                                      f"account name ([a-z_][a-z0-9_-]*[$]?)")
        return name


class HookResolver(AccountResolver):
    """``mapping = hook``: plugins implementing ``execd_map_owner`` decide (the first answer
    that is not None wins). ``hook`` is ``plugin_manager.hook.execd_map_owner``."""

    def __init__(self, section: IdentitySection, hook: Callable[..., Any]) -> None:
        super().__init__(section)
        self.hook = hook

    def describe(self) -> str:
        return "the execd_map_owner hook"

    def _map(self, owner: str, job: Mapping[str, Any]) -> str:
        # A copy behind a read-only view: a plugin must not change the job it is asked about.
        view = MappingProxyType(copy.deepcopy(dict(job)))
        try:
            name = self.hook(owner=owner, job=view)
        except Exception as exc:  # any failure of a plugin refuses this owner only
            raise self._refuse(owner, f"{self.describe()} raised {type(exc).__name__}: {exc}"
                               ) from exc
        if name is None:
            raise self._refuse(owner, f"{self.describe()} mapped it to nothing")
        if not isinstance(name, str) or not name:
            raise self._refuse(owner, f"{self.describe()} answered {name!r}, not an account "
                                      f"name")
        return name
