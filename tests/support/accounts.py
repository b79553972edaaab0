"""Real local Unix accounts and groups for tests, made with ``useradd``/``groupadd`` (root only).

Two layers:

* :func:`make_account`, :func:`make_group`, :func:`remove_account`, :func:`remove_group`: the
  exact names given, which must start with ``execdt_`` (so that nothing here can ever touch a
  real account); a leftover of the same name (a crashed run) is removed first.
* :class:`LocalAccounts`, made by :func:`local_accounts_session` for a session fixture: short
  names (``a1``) become names of this session (``execdt_s<pid>_a1``, the pid in base 36), so
  that two test sessions on one host (two engineers, two xdist workers) never share or delete
  each other's accounts; everything made is removed at the end, and the accounts of sessions
  that died without cleaning up are removed at the start.

Without root (or without useradd) the fixture skips its tests with the reason, except under
``CI=true``, where that is a failure: CI must run them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from execution_engine.identity import Account

PREFIX = "execdt_"
_SESSION_NAME = re.compile(rf"{PREFIX}s([0-9a-z]+)_")
_LOCKED_RETRIES = 100
"""useradd and friends fail when another one holds /etc/passwd's lock: tries before giving up."""


def unavailable_reason() -> str | None:
    """Why accounts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "making local accounts (useradd) needs root; run the tests as root"
    missing = [tool for tool in ("useradd", "userdel", "groupadd", "groupdel", "usermod")
               if shutil.which(tool) is None]
    if missing:
        return f"making local accounts needs {', '.join(missing)} (Debian package passwd)"
    return None


def require_accounts() -> None:
    """Skip the calling test or fixture when accounts cannot be made; fail it under ``CI=true``."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------- exact names
def make_account(name: str, groups: Iterable[str] = (), system: bool = False) -> Account:
    """Create the account ``name`` (home directory, shell /bin/sh, a primary group of its own
    name) with the supplementary ``groups`` (which must exist); ``system``: a system account
    (``useradd --system``: a uid below the regular range). Returns it as the engine sees it."""
    _check_name(name)
    remove_account(name)  # a leftover of a crashed run
    argv = ["useradd", "--create-home", "--user-group", "--shell", "/bin/sh"]
    if system:
        argv.append("--system")
    groups = list(groups)
    if groups:
        argv += ["--groups", ",".join(groups)]
    _run([*argv, name])
    return Account.lookup(name)


def make_group(name: str, system: bool = False) -> int:
    """Create the group ``name`` (replacing a leftover) and return its gid."""
    _check_name(name)
    remove_group(name)
    _run(["groupadd", *(["--system"] if system else []), name])
    return grp.getgrnam(name).gr_gid


def remove_account(name: str) -> None:
    """Remove the account ``name`` and its home directory, and its own group when it is left
    (after ``usermod -g``); nothing when there is no such account."""
    _check_name(name)
    if _exists(pwd.getpwnam, name):
        _end_processes_of(name)
        _run(["userdel", "--remove", name], ok_codes=(0, 12))  # 12: no home (already gone)
    if _exists(grp.getgrnam, name):
        _run(["groupdel", name])


def _end_processes_of(name: str) -> None:
    """Kill what still runs as the account (a job a scheduler is still tearing down): userdel
    refuses an account that has processes."""
    deadline = time.monotonic() + 30
    while subprocess.run(["pkill", "-KILL", "-u", name], check=False).returncode == 0:
        if time.monotonic() > deadline:
            return  # userdel then says what is left
        time.sleep(0.1)


def remove_group(name: str) -> None:
    """Remove the group ``name``; nothing when there is none."""
    _check_name(name)
    if _exists(grp.getgrnam, name):
        _run(["groupdel", name])


# ---------------------------------------------------------------------- a session's accounts
@dataclass
class LocalAccounts:
    """The accounts and groups of one test session: short names in, real accounts out."""

    tag: str
    accounts: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def name(self, short: str) -> str:
        """The real name of the short name ``short`` in this session."""
        return f"{PREFIX}{self.tag}_{short}"

    def account(self, short: str, groups: Iterable[str] = (), system: bool = False) -> Account:
        """Make the account ``short`` (its real name: :meth:`name`); ``groups``: the real names
        of supplementary groups (from :meth:`group`)."""
        name = self.name(short)
        account = make_account(name, groups, system)
        if name not in self.accounts:
            self.accounts.append(name)
        return account

    def group(self, short: str, system: bool = False) -> str:
        """Make the group ``short``; returns its real name."""
        name = self.name(short)
        make_group(name, system)
        if name not in self.groups:
            self.groups.append(name)
        return name

    def cleanup(self) -> None:
        """Remove everything this session made (accounts first: a group in use stays)."""
        for name in reversed(self.accounts):
            remove_account(name)
        for name in reversed(self.groups):
            remove_group(name)
        self.accounts.clear()
        self.groups.clear()


def local_accounts_session() -> Iterator[LocalAccounts]:
    """The body of a session fixture: ``yield from local_accounts_session()``."""
    require_accounts()
    remove_dead_sessions()
    accounts = LocalAccounts("s" + _base36(os.getpid()))
    try:
        yield accounts
    finally:
        accounts.cleanup()


def remove_dead_sessions() -> None:
    """Remove the accounts and groups of sessions whose process is gone (crashed runs)."""
    names = [entry.pw_name for entry in pwd.getpwall()]
    group_names = [entry.gr_name for entry in grp.getgrall()]
    for name in names:
        if _of_dead_session(name):
            remove_account(name)
    for name in group_names:
        if _of_dead_session(name):
            with contextlib.suppress(subprocess.CalledProcessError):  # still some account's
                remove_group(name)


# ---------------------------------------------------------------------- helpers
def _of_dead_session(name: str) -> bool:
    match = _SESSION_NAME.match(name)
    if match is None:
        return False
    pid = int(match.group(1), 36)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if not number:
            return text


def _check_name(name: str) -> None:
    if not name.startswith(PREFIX):
        raise ValueError(f"test accounts and groups are named {PREFIX}*, not {name!r}: this "
                         f"helper never touches any other")


def _exists(lookup: Callable[[str], object], name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def _run(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> None:
    """Run a shadow tool, again while another holds the password files' lock."""
    for _ in range(_LOCKED_RETRIES):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode in ok_codes:
            return
        if "lock" not in result.stderr.lower():
            break
        time.sleep(0.05)
    raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)


def write_map(path: Path, pairs: dict[str, str]) -> None:
    """Write an ``[identity]`` map file of ``owner account`` lines."""
    path.write_text("# owner account\n" + "".join(f"{o} {a}\n" for o, a in pairs.items()))
