"""The ``[identity]`` section: how a job's owner becomes a local account, as a typed object.

:func:`parse_identity_section` turns the configobj section (already validated against the
configspec) into an :class:`IdentitySection` and checks what the configspec cannot: keys that
must go together, the regular expression and its template, the pools, the groups named, and
the clients that sign their jobs' owners (their secret files are read here, with the
configuration). Every error is a ValueError whose message starts with ``[identity] <key>``, which
:mod:`execution_engine.config` turns into a ConfigError naming the file.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

MAPPINGS = ("off", "map", "pattern", "pool", "hook")
POOL_KEYS = ("project", "group")
MIN_SECRET_BYTES = 32
"""The shortest secret a client may sign with (after whitespace is stripped)."""

#: What an account name made from an owner (pattern mode) must look like: the portable subset
#: of useradd's names. An owner controls part of such a name, so nothing else gets through.
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]*[$]?")

#: The defaults, for a section a caller builds by hand (the configspec carries the same ones;
#: tests check that the two agree).
DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "mapping": "off",
    "map_file": "",
    "pattern": "",
    "account": "{user}",
    "pools": {},
    "pool_key": "project",
    "pool_idle_s": 86400.0,
    "min_uid": 1000,
    "groups": [],
    "group_access": "",
    "require_claim": False,
    "clients": {},
})


@dataclass(frozen=True)
class ClaimClient:
    """A client (a portal) that signs its jobs' owners: ``[identity] [[clients]] [[[name]]]``."""

    name: str
    secret: bytes | None = field(repr=False)
    """The shared secret (the secret file's content, whitespace stripped); None in a process
    that may not read the file (an operator's client command): only the daemon needs it.
    Never shown: not in ``repr``, never in a message."""
    owners: str = ".*"
    """A regular expression the whole owner of each of its jobs must match."""
    projects: tuple[str, ...] = ()
    """The projects its jobs may name (the engine's default project included); empty: any."""


@dataclass(frozen=True)
class IdentitySection:
    """The parsed ``[identity]`` section (see ``conf/execd.ini`` for what each key means)."""

    mapping: str
    """``off`` (jobs run as the daemon's user), ``map``, ``pattern``, ``pool`` or ``hook``."""
    map_file: Path | None
    """map mode: the file of ``owner account`` lines (absolute)."""
    pattern: str
    """pattern mode: a regular expression with named groups, matched against the whole owner."""
    account: str
    """pattern mode: the account name, ``str.format`` of the pattern's named groups."""
    map_table: Mapping[str, str] = field(default_factory=dict)
    """map mode: the file's table, read with the configuration (at start and at each reload),
    so that every actor maps with the same table, and a broken file is refused with it."""
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """pool mode: pool name -> its accounts (an account is in one pool at most)."""
    pool_key: str = "project"
    """pool mode: the job field naming the pool (``project`` or ``group``)."""
    pool_idle_s: float = 86400.0
    """pool mode: seconds after its last use when a leased account goes back to its pool."""
    min_uid: int = 1000
    """The lowest uid a job may run as (at least 1: uid 0 is refused whatever)."""
    groups: tuple[str, ...] = ()
    """When not empty: the account must be a member of one of these groups."""
    group_access: str = ""
    """A group given read access to job directories (mode 0750); empty: none (mode 0700)."""
    require_claim: bool = False
    """Every job must carry a valid owner claim of one of :attr:`clients` (mapping on)."""
    clients: Mapping[str, ClaimClient] = field(default_factory=dict)
    """The clients that sign their jobs' owners, by name (``identity/claims.py``)."""

    @property
    def enabled(self) -> bool:
        """Whether owners are mapped at all (``mapping`` is not ``off``)."""
        return self.mapping != "off"


def parse_identity_section(section: Mapping[str, Any], base: Path) -> IdentitySection:
    """The :class:`IdentitySection` of a validated ``[identity]`` section (missing keys take the
    defaults); a relative ``map_file`` is resolved against ``base``.

    Raises ValueError naming the key for a combination the configspec cannot refuse: a mode
    without what it needs, a bad regular expression or template, a bad pool, ``min_uid`` below
    1, ``pool_idle_s`` not above 0, or a group that does not exist.
    """
    values = {**DEFAULTS, **section}
    mapping = str(values["mapping"])
    if mapping not in MAPPINGS:
        raise ValueError(f"[identity] mapping: {mapping!r} is not one of {', '.join(MAPPINGS)}")
    pool_key = str(values["pool_key"])
    if pool_key not in POOL_KEYS:
        raise ValueError(f"[identity] pool_key: {pool_key!r} is not one of "
                         f"{', '.join(POOL_KEYS)}")
    min_uid = int(values["min_uid"])
    if min_uid < 1:
        raise ValueError(f"[identity] min_uid: {min_uid} is below 1 (jobs never run as root)")
    pool_idle_s = float(values["pool_idle_s"])
    if not pool_idle_s > 0:
        # A lease idle at once could be handed to a second owner while the first one's job runs.
        raise ValueError(f"[identity] pool_idle_s: {pool_idle_s} is not above 0")
    pattern, account = str(values["pattern"]), str(values["account"])
    _check_pattern(pattern, account, required=mapping == "pattern")
    pools = _pools(values["pools"], required=mapping == "pool")
    groups = tuple(str(g) for g in values["groups"] if g)
    for name in groups:
        _check_group(name, "groups")
    group_access = str(values["group_access"])
    if group_access:
        _check_group(group_access, "group_access")
    map_file = _map_file(str(values["map_file"]), base, required=mapping == "map")
    clients = _clients(values["clients"], base)
    require_claim = bool(values["require_claim"])
    if require_claim and mapping != "off" and not clients:
        raise ValueError("[identity] require_claim: on, but [[clients]] names no client whose "
                         "claims a job could carry")
    return IdentitySection(
        mapping=mapping,
        map_file=map_file,
        map_table=_read_map_file(map_file) if mapping == "map" and map_file else {},
        pattern=pattern,
        account=account,
        pools=pools,
        pool_key=pool_key,
        pool_idle_s=pool_idle_s,
        min_uid=min_uid,
        groups=groups,
        group_access=group_access,
        require_claim=require_claim,
        clients=clients,
    )


def template_fields(account: str) -> set[str]:
    """The fields of the ``account`` template; ValueError when it is not a plain template.

    Only bare names are allowed (``{user}``, not ``{user.attr}`` or ``{0}``): the values are the
    owner's text and the template must not reach beyond them."""
    fields = set()
    try:
        parsed = list(string.Formatter().parse(account))
    except ValueError as exc:
        raise ValueError(f"[identity] account: {account!r} is not a valid template: {exc}"
                         ) from None
    for _literal, name, _spec, _conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"[identity] account: {{{name}}} in {account!r} is not the name "
                             f"of a group of the pattern")
        fields.add(name)
    return fields


def _check_pattern(pattern: str, account: str, *, required: bool) -> None:
    if not pattern:
        if required:
            raise ValueError("[identity] pattern: empty, but mapping = pattern needs one")
        return
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"[identity] pattern: {pattern!r} is not a valid regular expression: "
                         f"{exc}") from None
    missing = template_fields(account) - set(compiled.groupindex)
    if missing:
        raise ValueError(
            f"[identity] account: {account!r} uses {', '.join(sorted(missing))}, which "
            f"[identity] pattern {pattern!r} has no named group for (write (?P<name>...))")


def _pools(raw: Any, *, required: bool) -> Mapping[str, tuple[str, ...]]:
    pools: dict[str, tuple[str, ...]] = {}
    pool_of: dict[str, str] = {}
    for name, accounts in dict(raw or {}).items():
        members = tuple(str(a) for a in ([accounts] if isinstance(accounts, str) else accounts)
                        if a)
        if not members:
            raise ValueError(f"[identity][pools] {name}: a pool without accounts")
        for member in members:
            # A lease is recorded by account name: an account in two pools could be leased
            # twice, once in each.
            if member in pool_of:
                raise ValueError(f"[identity][pools] {name}: account {member!r} is also in "
                                 f"pool {pool_of[member]!r}; an account may be in one pool only")
            pool_of[member] = name
        pools[str(name)] = members
    if required and not pools:
        raise ValueError("[identity] pools: empty, but mapping = pool needs at least one pool "
                         "([[pools]] name = account1, account2)")
    # A plain dict, not a read-only view: the configuration is pickled to the actors, and a
    # mappingproxy does not pickle.
    return pools


def _map_file(value: str, base: Path, *, required: bool) -> Path | None:
    if not value:
        if required:
            raise ValueError("[identity] map_file: empty, but mapping = map needs one")
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (base / path).resolve()
    if required and not path.is_file():
        raise ValueError(f"[identity] map_file: {path} is not a file")
    return path


def _read_map_file(path: Path) -> dict[str, str]:
    """The table of a map file, refused when another account could rewrite the file (it
    decides who runs as whom) or when it does not read as a map; empty in a client command of
    an operator who may not read it (only the daemon, root with identity on, needs it)."""
    from execution_engine.identity.mapping import parse_map  # it imports this module

    try:
        data = read_guarded_file(path, others_may_not=0o022, holds="decides who runs as whom")
    except ValueError as exc:
        raise ValueError(f"[identity] map_file: {exc}") from None
    if data is None:
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"[identity] map_file: cannot read {path}: {exc}") from None
    return dict(parse_map(text, path))


def read_guarded_file(path: Path, *, others_may_not: int, holds: str, required: bool = False,
                      limit: int = -1) -> bytes | None:
    """The content of ``path`` (at most ``limit`` bytes), a file that decides what the daemon
    does; None when this process is not root and may not read it (and ``required`` is false):
    an operator's client command reads the configuration too, and only the daemon needs it.

    Raises ValueError, without the content, when the file cannot be read, is not a regular
    file, or is owned by an account other than root and this process's, or has any of the
    mode bits ``others_may_not``; ``holds`` says in that message what is at stake. The checks
    are of the file opened (wherever a link on the way leads), opened without blocking (a FIFO
    never hangs the reader)."""
    daemon_only = not required and os.geteuid() != 0
    try:
        path.stat()
        if daemon_only and not os.access(path, os.R_OK):
            return None
    except PermissionError:
        if daemon_only:  # a folder on the way this process may not search
            return None
        raise ValueError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & others_may_not:
            what = "read or changed" if others_may_not & 0o044 else "changed"
            raise ValueError(
                f"{path} may be {what} by others than root and this process's account (owner "
                f"uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}): it {holds}")
        with os.fdopen(os.dup(fd), "rb") as stream:
            return stream.read(limit)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)

def _check_group(name: str, key: str) -> None:
    try:
        grp.getgrnam(name)
    except (KeyError, ValueError):  # ValueError: a name with a NUL byte
        raise ValueError(f"[identity] {key}: no group {name!r} on this host") from None


def _clients(raw: Any, base: Path) -> dict[str, ClaimClient]:
    clients: dict[str, ClaimClient] = {}
    for name, values in dict(raw or {}).items():
        where = f"[identity] [[clients]] [[[{name}]]]"
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: a client is a sub-section (secret_file, owners, "
                             f"projects), not a value")
        owners = str(values.get("owners", ".*"))
        try:
            re.compile(owners)
        except re.error as exc:
            raise ValueError(f"{where} owners: {owners!r} is not a valid regular expression: "
                             f"{exc}") from None
        projects = values.get("projects", [])
        projects = [projects] if isinstance(projects, str) else projects
        value = str(values.get("secret_file", ""))
        if not value:
            raise ValueError(f"{where} secret_file: missing; a client signs with a secret "
                             f"that only it and the daemon may read")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else (base / path).resolve()
        try:
            secret = read_secret_file(path)
        except ValueError as exc:
            raise ValueError(f"{where} secret_file: {exc}") from None
        # A plain dict of frozen dataclasses: the configuration is pickled to the actors.
        clients[str(name)] = ClaimClient(name=str(name), secret=secret, owners=owners,
                                         projects=tuple(str(p) for p in projects if p))
    return clients


def read_secret_file(path: Path, *, required: bool = False) -> bytes | None:
    """The secret in ``path``, whitespace stripped; None when this process is not root and
    may not read it (and ``required`` is false): only the daemon needs a client's secret.

    Raises ValueError, without the secret, when the file is not a regular file, when an
    account other than root and this process's may read or change it (owner, or any mode bit
    for group or others), or when it holds fewer than :data:`MIN_SECRET_BYTES` bytes."""
    data = read_guarded_file(path, others_may_not=0o077, required=required, limit=1 << 16,
                             holds=f"holds a client's secret (chmod 600 {path})")
    if data is None:
        return None
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path} holds {len(secret)} bytes; a secret needs at least "
                         f"{MIN_SECRET_BYTES} (e.g. openssl rand -hex 32 > {path})")
    return secret
