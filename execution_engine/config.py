"""Reading ``execd.ini``: configobj validated against the configspec shipped in the package.

The file is read once (at start and at each reload) into an :class:`EngineConfig`, a tree of
small typed objects that every process receives. A bad value is reported with the file, the
section, the key and what is wrong, and the configuration is refused as a whole.

Where the file comes from: ``-c FILE``, else ``$EXECD_CONFIG``, else ``/etc/execd/execd.ini`` when
it exists, else the built-in defaults (embedded MongoDB, one Local system).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import validate
from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values

from execution_engine.errors import ConfigError
from execution_engine.identity import IdentitySection, parse_identity_section
from execution_engine.mongoaccess import read_credentials_file, redact_uri, with_credentials
from execution_engine.resubmission import Policy

SYSTEM_CONFIG_PATH = Path("/etc/execd/execd.ini")
ENV_CONFIG = "EXECD_CONFIG"
DEFAULT_SYSTEM = "local"


@dataclass(frozen=True)
class EngineSection:
    state_dir: Path
    jobs_dir: Path
    pid_file: Path
    umask: int
    log_file: Path
    log_level: str
    mail_critical_to: str
    job_path: str
    max_command_bytes: int
    max_document_bytes: int
    input_dirs: tuple[Path, ...] = ()
    """Folders the file inputs of application jobs may come from (empty: anywhere the daemon can
    read)."""

    @property
    def mongodb_uri_file(self) -> Path:
        """Where the embedded mongod's URI is published for client commands."""
        return self.state_dir / "mongodb.uri"

    @property
    def slots_dir(self) -> Path:
        return self.state_dir / "slots"

    @property
    def control_dir(self) -> Path:
        """Where the daemon publishes its status (start time, reload results)."""
        return self.state_dir / "run"


@dataclass(frozen=True)
class MongoSection:
    uri: str = field(repr=False)
    """The URI every process connects with: ``[mongodb] uri`` with the credentials of
    ``credentials_file`` put in. It may hold a password: show :attr:`display_uri` instead."""
    database: str
    embedded_port: int
    mongod: str
    server_selection_timeout: float
    credentials_file: Path | None = None
    """Where the credentials came from (None: from the URI itself, or none)."""

    @property
    def embedded(self) -> bool:
        return not self.uri

    @property
    def display_uri(self) -> str:
        """The URI with its password and secret options redacted: what logs and messages show."""
        return redact_uri(self.uri)


@dataclass(frozen=True)
class MonitorSection:
    poll_interval: float
    lease_seconds: float
    recovery_interval: float
    sweep_interval: float
    restart_backoff: float


@dataclass(frozen=True)
class ActorsSection:
    building: int
    submit: int
    status: int
    notification: int
    batch_size: int

    def pool_size(self, kind: str) -> int:
        return int(getattr(self, kind))


@dataclass(frozen=True)
class NotificationSection:
    smtp_host: str
    smtp_port: int
    smtp_timeout: float
    smtp_starttls: bool
    smtp_user: str
    smtp_password: str
    sender: str
    subject: str
    body: str
    max_attempts: int
    retry_backoff: float


@dataclass(frozen=True)
class PluginsSection:
    routing_rules: tuple[Path, ...]
    systems: tuple[Path, ...]
    rule_timeout: float


@dataclass(frozen=True)
class SystemSection:
    """One ``[systems]`` sub-section: an execution system's name, class and raw options.

    The options are checked against the class's own option spec when the system is created
    (:mod:`execution_engine.plugins`), with errors naming this section.
    """

    name: str
    cls: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class RuleRef:
    """A rule of a route, with its parameters (still strings; the rule checks them)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteSection:
    name: str
    system: str
    rules: tuple[RuleRef, ...]
    resubmit: Policy = field(default_factory=Policy)
    """What happens to a job whose attempt on this route failed (docs/failures.md)."""


def _identity_off() -> IdentitySection:
    """``[identity]`` as the built-in defaults have it: owners not mapped."""
    return parse_identity_section({}, Path("/"))


@dataclass(frozen=True)
class EngineConfig:
    path: Path | None
    engine: EngineSection
    mongodb: MongoSection
    monitor: MonitorSection
    actors: ActorsSection
    notification: NotificationSection
    plugins: PluginsSection
    systems: tuple[SystemSection, ...]
    routes: tuple[RouteSection, ...]
    identity: IdentitySection = field(default_factory=_identity_off)
    """How a job's owner becomes the local account it runs as."""

    def system(self, name: str) -> SystemSection:
        for section in self.systems:
            if section.name == name:
                return section
        raise KeyError(name)

    def route(self, name: str) -> RouteSection | None:
        """The route section called ``name``, or None."""
        return next((route for route in self.routes if route.name == name), None)

    def describe_source(self) -> str:
        return str(self.path) if self.path else "built-in defaults"


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The configuration file to read, by the documented order, or None for built-in defaults."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(ENV_CONFIG)
    if from_env:
        return Path(from_env)
    if SYSTEM_CONFIG_PATH.exists():
        return SYSTEM_CONFIG_PATH
    return None


def load_config(explicit: str | os.PathLike[str] | None = None) -> EngineConfig:
    """Read and validate the configuration; raises ConfigError naming every problem."""
    path = find_config_path(explicit)
    if path is not None and not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    return parse_config(path.read_text() if path else "", path)


def parse_config(text: str, path: Path | None = None) -> EngineConfig:
    """Validate configuration text; ``path`` is what error messages name."""
    where = str(path) if path else "<defaults>"
    if path is not None and not path.exists():
        raise ConfigError(f"configuration file {path} does not exist")
    spec = resources.files("execution_engine").joinpath("configspec.ini").read_text()
    try:
        raw = ConfigObj(
            text.splitlines(),
            configspec=spec.splitlines(),
            interpolation=False,
            file_error=False,
            raise_errors=False,
        )
    except ConfigObjError as exc:
        raise ConfigError(f"cannot parse: {exc}", where) from exc
    result = raw.validate(validate.Validator(), preserve_errors=True, copy=True)
    problems = _describe_problems(raw, result)
    if problems:
        raise ConfigError(problems, where)
    base = path.parent if path else Path.cwd()
    try:
        return _build(raw, path, base)
    except ValueError as exc:
        raise ConfigError(str(exc), where) from exc


def engine_section_leniently(explicit: str | os.PathLike[str] | None = None) -> EngineSection:
    """The ``[engine]`` paths of a configuration that may be invalid elsewhere (``execd reload``
    must reach the daemon to have it log why it refuses a broken file). Raises ConfigError only
    when even ``[engine]`` is unusable."""
    path = find_config_path(explicit)
    spec = resources.files("execution_engine").joinpath("configspec.ini").read_text()
    text = path.read_text() if path is not None and path.is_file() else ""
    try:
        raw = ConfigObj(text.splitlines(), configspec=spec.splitlines(), interpolation=False)
    except ConfigObjError as exc:
        raise ConfigError(f"cannot parse: {exc}", str(path)) from exc
    engine_only = ConfigObj({"engine": raw.get("engine", {})}, configspec=spec.splitlines(),
                            interpolation=False)
    engine_only.validate(validate.Validator(), copy=True)
    base = path.parent if path else Path.cwd()
    try:
        return _build(engine_only, path, base).engine
    except ValueError as exc:
        raise ConfigError(str(exc), str(path)) from exc


def _describe_problems(raw: ConfigObj, result: Any) -> list[str]:
    problems = []
    if result is not True:
        for sections, key, error in flatten_errors(raw, result):
            place = _place(sections, key)
            if key is None:
                problems.append(f"{place}: missing section")
            elif error is False:
                problems.append(f"{place}: missing required value")
            else:
                problems.append(f"{place}: {error}")
    for sections, name in get_extra_values(raw):
        # Systems take class-specific options, and rule parameter sections are free-form:
        # those are checked later by the class or the rule.
        if sections and sections[0] in ("systems", "routes") and len(sections) >= 2:
            continue
        problems.append(f"{_place(sections, name)}: unknown key or section")
    return problems


def _place(sections: list[str] | tuple[str, ...], key: str | None) -> str:
    path = "".join(f"[{s}]" for s in sections)
    if not key:
        return path or "(top level)"
    return f"{path} {key}" if path else f"[{key}]"


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/execd")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "execd"


def _path(value: str, base: Path, default: Path) -> Path:
    if not value:
        return default
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate).resolve()


def _mongodb(section: Mapping[str, Any], base: Path) -> MongoSection:
    """``[mongodb]``, with the credentials file (checked: owner-only) folded into the URI."""
    values = dict(section)
    uri = values.pop("uri")
    credentials_file = values.pop("credentials_file")
    path = None
    if credentials_file:
        if not uri:
            raise ValueError("[mongodb] credentials_file is set but [mongodb] uri is empty: the "
                             "embedded MongoDB takes no credentials; set uri to your server")
        path = _path(credentials_file, base, Path(credentials_file))
        uri = with_credentials(uri, read_credentials_file(path))
    return MongoSection(uri=uri, credentials_file=path, **values)


def _build(raw: ConfigObj, path: Path | None, base: Path) -> EngineConfig:
    eng = raw["engine"]
    state_dir = _path(eng["state_dir"], base, _default_state_dir())
    try:
        umask = int(eng["umask"], 8)
    except ValueError:
        raise ValueError(f"[engine] umask: {eng['umask']!r} is not an octal number") from None
    engine = EngineSection(
        state_dir=state_dir,
        jobs_dir=_path(eng["jobs_dir"], base, state_dir / "jobs"),
        pid_file=_path(eng["pid_file"], base, state_dir / "execd.pid"),
        umask=umask,
        log_file=_path(eng["log_file"], base, state_dir / "execd.log"),
        log_level=eng["log_level"],
        mail_critical_to=eng["mail_critical_to"],
        job_path=eng["job_path"],
        max_command_bytes=eng["max_command_bytes"],
        max_document_bytes=eng["max_document_bytes"],
        input_dirs=tuple(_path(p, base, Path(p)) for p in eng["input_dirs"] if p),
    )
    plugins = raw["plugins"]
    systems = tuple(
        SystemSection(
            name=name,
            cls=section["class"],
            options={k: v for k, v in section.items() if k != "class"},
        )
        for name, section in raw["systems"].items()
    ) or (SystemSection(DEFAULT_SYSTEM, "local", {"status_interval": 0.0}),)
    routes = tuple(
        RouteSection(
            name=name,
            system=section["system"],
            rules=tuple(
                RuleRef(rule, dict(section.get(rule, {}))) for rule in section["rules"]
            ),
            resubmit=Policy.from_options(section, f"[routes][{name}]"),
        )
        for name, section in raw["routes"].items()
    ) or (RouteSection("default", systems[0].name, ()),)
    for name, section in raw["routes"].items():
        listed = set(section["rules"])
        for sub_name in section.sections:
            if sub_name not in listed:
                raise ValueError(
                    f"[routes][{name}][{sub_name}]: parameters for a rule that is not in this "
                    f"route's rules ({', '.join(sorted(listed)) or 'none'}); misspelled?")
    route_names = {route.name for route in routes}
    for route in routes:
        if route.resubmit.route is not None and route.resubmit.route not in route_names:
            raise ValueError(
                f"[routes][{route.name}] resubmit_route: {route.resubmit.route!r} is not a "
                f"route (known: {', '.join(sorted(route_names))})")
        if route.system not in {s.name for s in systems}:
            raise ValueError(
                f"[routes][{route.name}] system: {route.system!r} is not a section of [systems]"
                f" (known: {', '.join(s.name for s in systems)})"
            )
    return EngineConfig(
        path=path,
        engine=engine,
        mongodb=_mongodb(raw["mongodb"], base),
        monitor=MonitorSection(**raw["monitor"]),
        actors=ActorsSection(**raw["actors"]),
        notification=NotificationSection(**raw["notification"]),
        plugins=PluginsSection(
            routing_rules=tuple(_path(p, base, Path(p)) for p in plugins["routing_rules"]),
            systems=tuple(_path(p, base, Path(p)) for p in plugins["systems"]),
            rule_timeout=plugins["rule_timeout"],
        ),
        systems=systems,
        routes=routes,
        identity=parse_identity_section(raw["identity"], base),
    )
