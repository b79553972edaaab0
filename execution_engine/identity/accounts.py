"""Local accounts: what one is (:class:`Account`) and whether a job may run as it (:func:`vet`).

Vetting is the last word of every mapping mode: whatever a map file, a pattern, a pool or a
plugin answered, a job runs only as an existing account that is not root, has no root primary
group, has a uid at or above the floor and, when the site lists groups, belongs to one of them.
A mistake of the administrator must never become a root shell.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Account:
    """A local Unix account, as the password and group databases describe it."""

    name: str
    uid: int
    gid: int
    """The primary group."""
    groups: tuple[int, ...]
    """Every group the account is in, the primary one included (``getgrouplist``)."""
    home: str
    shell: str

    @classmethod
    def lookup(cls, name: str) -> Account:
        """The account ``name`` as the system sees it now; raises KeyError when there is none."""
        try:
            entry = pwd.getpwnam(name)
        except ValueError:  # a name with a NUL byte names no account
            raise KeyError(name) from None
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
            home=entry.pw_dir,
            shell=entry.pw_shell,
        )

    def environment(self) -> dict[str, str]:
        """The login variables of a process run as this account."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "SHELL": self.shell}


def group_ids(names: Iterable[str]) -> frozenset[int]:
    """The gids of the groups ``names``; raises ValueError naming a group that does not exist
    (looked up when a resolver is made, so a group removed since the configuration was read is
    reported then, not silently ignored)."""
    gids = set()
    for name in names:
        try:
            gids.add(grp.getgrnam(name).gr_gid)
        except (KeyError, ValueError):
            raise ValueError(f"[identity] groups: no group {name!r} on this host") from None
    return frozenset(gids)


def vet(name: str, *, min_uid: int, allowed_gids: frozenset[int], group_names: Iterable[str]
        ) -> Account | str:
    """The account ``name`` when a job may run as it, else why not (a phrase).

    ``allowed_gids`` empty means any group; else the account's primary or supplementary groups
    must include one of them (``group_names`` are their names, for the message)."""
    try:
        account = Account.lookup(name)
    except KeyError:
        return "no such local account"
    if account.uid == 0:
        return "it has uid 0 (root), which is never allowed"
    if account.gid == 0:
        return "its primary group is gid 0 (root), which is never allowed"
    if account.uid < min_uid:
        return f"its uid {account.uid} is below the uid floor {min_uid} ([identity] min_uid)"
    if allowed_gids and allowed_gids.isdisjoint({account.gid, *account.groups}):
        return f"it is in none of the groups {', '.join(group_names)} ([identity] groups)"
    return account


READ = 4
SEARCH = 1


def permits(account: Account, info: os.stat_result, wanted: int) -> bool:
    """Whether the mode bits of a file with ``info`` give ``account`` the ``wanted`` access
    (:data:`READ`, :data:`SEARCH`), as the kernel decides for an account that is not root:
    the owner's bits, else the group's when the file's group is one of the account's, else
    the others'. Access control lists are not consulted (a file shared only by an ACL is
    refused)."""
    if info.st_uid == account.uid:
        bits = info.st_mode >> 6
    elif info.st_gid == account.gid or info.st_gid in account.groups:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    return bits & wanted == wanted


def open_as(account: Account, path: Path) -> int:
    """A read-only descriptor of the regular file ``path``, opened by root but only when
    ``account`` itself could open it: every folder on the way searchable by the account and
    the file readable by it. The path is resolved first (links the administrator made stay
    usable); then each component is opened relative to its parent without following links
    and checked on its descriptor, so a folder swapped for a link after the resolution is
    refused rather than followed. Non-blocking open (a FIFO never hangs the caller), checked
    to be a regular file. Raises PermissionError naming what the account may not read, or
    OSError."""
    resolved = path.resolve()
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = Path("/")
        for part in resolved.parts[1:]:
            if not permits(account, os.fstat(fd), SEARCH):
                raise PermissionError(f"account {account.name} may not enter {walked}")
            walked = walked / part
            last = walked == resolved
            flags = (os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                     | (os.O_NONBLOCK if last else os.O_DIRECTORY))
            next_fd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{resolved} is not a regular file")
        if not permits(account, info, READ):
            raise PermissionError(f"account {account.name} may not read {resolved}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
