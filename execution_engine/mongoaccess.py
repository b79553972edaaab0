"""Access to a MongoDB server with authentication: credentials, redacted URIs, readable refusals.

Credentials reach the engine in one of two ways, both ending in the connection URI that every
process of the daemon and every client command uses (pymongo authenticates on each connection
it opens, and TLS options such as ``tls=true&tlsCAFile=...`` pass through the URI untouched):

* in ``[mongodb] uri`` itself (``mongodb://user:password@host/?authSource=admin``), or
* in a credentials file named by ``[mongodb] credentials_file``: ``key = value`` lines with
  ``username``, ``password`` and optionally ``auth_source`` and ``auth_mechanism``. The file must
  be readable by its owner only (mode 0600 or 0400): one readable by group or others is refused.

A URI is never shown as it is: :func:`redact_uri` replaces the password (and the secret URI
options) by ``***`` wherever a URI is logged or printed. :func:`describe_database_error` turns
MongoDB's authentication and authorization failures into one line naming the server, the user and
the database, for the command line and the daemon's start.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from execution_engine.errors import ConfigError, ExecdError

REDACTED = "***"
SECRET_OPTIONS = frozenset({
    "tlscertificatekeyfilepassword", "sslpemkeypassword", "authmechanismproperties", "password",
})
"""URI options (lower case) whose values are secrets and are redacted like the password."""

CREDENTIAL_KEYS = {
    "username": "username", "password": "password",
    "auth_source": "authSource", "auth_mechanism": "authMechanism",
}
"""The keys of a credentials file, and the URI option each of the optional ones becomes."""

AUTHENTICATION_FAILED = 18
UNAUTHORIZED = 13


@dataclass(frozen=True)
class Credentials:
    """A MongoDB user's name and password (never shown: the password is kept out of repr)."""

    username: str
    password: str = field(repr=False)
    auth_source: str = ""
    auth_mechanism: str = ""


# ---------------------------------------------------------------------- the credentials file
def read_credentials_file(path: Path) -> Credentials:
    """The credentials in ``path``; raises ConfigError naming the file when it is missing, not a
    regular file, readable (or writable) by group or others, or malformed."""
    where = f"[mongodb] credentials_file {path}"
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where}: is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"{where}: is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o});"
            f" it holds a password: make it readable by its owner only (chmod 600 {path})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read ({exc})") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        # The line itself is never quoted in an error: it may be the password.
        if not sep:
            raise ConfigError(f"{where}: line {number} is not 'key = value'")
        if key not in CREDENTIAL_KEYS:
            raise ConfigError(f"{where}: line {number}: unknown key {key!r} (known: "
                              f"{', '.join(CREDENTIAL_KEYS)})")
        if key in values:
            raise ConfigError(f"{where}: line {number}: {key} is given twice")
        values[key] = value.strip()
    missing = [k for k in ("username", "password") if not values.get(k)]
    if missing:
        raise ConfigError(f"{where}: no {' and no '.join(missing)}")
    return Credentials(values["username"], values["password"], values.get("auth_source", ""),
                       values.get("auth_mechanism", ""))


# ---------------------------------------------------------------------- URIs
def _split(uri: str, *, cautious: bool = False) -> tuple[str, str, str]:
    """``(scheme "://", userinfo, rest)`` of a MongoDB URI; userinfo without its ``@``.

    As pymongo reads it, the userinfo ends at the last ``@`` before the first ``/``. ``cautious``
    (for redaction) takes everything up to the last ``@`` of the whole URI instead, so that a
    password that was not percent-encoded as it must be is still hidden whole (an ``@`` in an
    option then hides the hosts too, which is the safe side)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "", "", uri
    at = rest.rfind("@") if cautious else rest.partition("/")[0].rfind("@")
    if at < 0:
        return scheme + sep, "", rest
    return scheme + sep, rest[:at], rest[at + 1:]


def uri_user(uri: str) -> str:
    """The user name in ``uri`` (decoded), or ``""``."""
    _, userinfo, _ = _split(uri)
    return unquote_plus(userinfo.split(":", 1)[0]) if userinfo else ""


def redact_uri(uri: str) -> str:
    """``uri`` with its password and secret options replaced by ``***``: what may be logged."""
    scheme, userinfo, rest = _split(uri, cautious=True)
    if userinfo:
        user, has_password, _ = userinfo.partition(":")
        rest = f"{user}:{REDACTED}@{rest}" if has_password else f"{user}@{rest}"
    hosts, sep, query = rest.partition("?")
    if sep:
        options = []
        for option in query.split("&"):
            name, has_value, _ = option.partition("=")
            secret = has_value and name.lower() in SECRET_OPTIONS
            options.append(f"{name}={REDACTED}" if secret else option)
        rest = hosts + sep + "&".join(options)
    return scheme + rest


def with_credentials(uri: str, credentials: Credentials) -> str:
    """``uri`` with the user, password and authentication options of ``credentials`` (encoded as
    a URI requires). Raises ValueError when ``uri`` already names a user: one place only."""
    scheme, userinfo, rest = _split(uri)
    if not scheme:
        raise ValueError("[mongodb] uri: not a mongodb:// or mongodb+srv:// URI")
    if userinfo:
        raise ValueError("[mongodb] uri names a user and [mongodb] credentials_file is set: "
                         "give the credentials in one place only")
    result = (f"{scheme}{quote_plus(credentials.username)}:{quote_plus(credentials.password)}"
              f"@{rest}")
    options = {"authSource": credentials.auth_source,
               "authMechanism": credentials.auth_mechanism}
    present = {o.partition("=")[0].lower() for o in rest.partition("?")[2].split("&") if o}
    for name, value in options.items():
        if not value or name.lower() in present:
            continue
        if "?" in result:
            result += "&"
        elif "/" in rest:
            result += "?"
        else:
            result += "/?"
        result += f"{name}={quote_plus(value)}"
    return result


# ---------------------------------------------------------------------- errors
def describe_database_error(exc: BaseException, uri: str, database: str) -> str:
    """One line saying what went wrong between this process and MongoDB, naming the server (its
    URI redacted), the user and the database: for authentication failures and refused
    operations; other errors as pymongo words them."""
    user = uri_user(uri)
    who = f"as user {user!r}" if user else "without credentials"
    server = f" {redact_uri(uri)}" if uri else ""
    if isinstance(exc, OperationFailure) and exc.code == AUTHENTICATION_FAILED:
        return (f"cannot log in to MongoDB{server} {who} for database {database!r}: "
                "authentication failed (check the user name, the password and authSource)")
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        what = _refused_command(exc)
        return (f"MongoDB{server} refused {what} in database {database!r} {who}: not "
                "authorized (this user's roles do not allow it)")
    return f"MongoDB{server} (database {database!r}): {exc}"


def _refused_command(exc: OperationFailure) -> str:
    """``'insert into jobs'``-like words for the command MongoDB refused, from its message."""
    details: Any = exc.details or {}
    message = str(details.get("errmsg", "")) if isinstance(details, dict) else ""
    if message.startswith("command ") and message.endswith("requires authentication"):
        return f"{message.split()[1]} (no login)"
    _, sep, command = message.partition("to execute command {")
    if not sep:
        return "the operation"
    name, _, rest = command.strip().partition(":")
    target = rest.strip().split(",", 1)[0].strip().strip('"')
    return f"{name.strip()} on collection {target!r}" if target else name.strip()


def check_database_access(uri: str, database: str, *, timeout: float = 10.0) -> None:
    """Log in to ``uri`` and read ``database``'s jobs once; raises ExecdError with
    :func:`describe_database_error`'s words when that fails (wrong password, missing role,
    server unreachable)."""
    client: MongoClient[Any] = MongoClient(uri, serverSelectionTimeoutMS=int(timeout * 1000),
                                           appname="execd")
    try:
        client[database].jobs.find_one({}, {"_id": 1})
    except PyMongoError as exc:
        raise ExecdError(describe_database_error(exc, uri, database)) from None
    finally:
        client.close()
