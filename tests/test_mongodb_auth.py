"""MongoDB with access control: the daemon, the client commands and the client library log in
with credentials from a credentials file or the URI, never show a password, and a client's
roles decide what it can do.

Against a real ``mongod --auth`` with a keyFile (``secure_mongod`` in conftest), whose users and
roles each test module creates as a site would: ``admin`` (root, made through the localhost
exception), ``execd`` (readWrite on the engine's database), ``portal`` (a custom role: find,
insert, update and changeStream on ``jobs``, find on ``apps``) and ``reader`` (read).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from execution_engine import Client
from execution_engine.config import load_config, parse_config
from execution_engine.errors import ConfigError
from execution_engine.mongoaccess import (
    Credentials,
    describe_database_error,
    redact_uri,
    uri_user,
    with_credentials,
)
from tests.conftest import ROOT, Engine, SecureMongo, execd_command

PORTAL_ROLE = "execdPortal"


@dataclass(frozen=True)
class Site:
    """The users of one engine database on the secure mongod, with their passwords."""

    mongo: SecureMongo
    database: str
    passwords: dict[str, str]

    def credentials_file(self, folder: Path, user: str, password: str | None = None) -> Path:
        path = folder / f"{user}.credentials"
        path.write_text(f"# MongoDB user of execd\nusername = {user}\n"
                        f"password = {password or self.passwords[user]}\nauth_source = admin\n")
        path.chmod(0o600)
        return path

    def client_config(self, folder: Path, user: str, password: str | None = None) -> Path:
        """A client's execd.ini: the server's URI without credentials, and a credentials file."""
        credentials = self.credentials_file(folder, user, password)
        path = folder / f"{user}-{uuid.uuid4().hex[:6]}.ini"
        path.write_text(textwrap.dedent(f"""\
            [engine]
            state_dir = {folder / (user + "-state")}

            [mongodb]
            uri = {self.mongo.uri}
            database = {self.database}
            credentials_file = {credentials}
            server_selection_timeout = 5
            """))
        return path


@pytest.fixture(scope="module")
def site(secure_mongod: SecureMongo) -> Iterator[Site]:
    database = f"sec_{uuid.uuid4().hex[:10]}"
    passwords = {user: f"{user}-{uuid.uuid4().hex}" for user in ("execd", "portal", "reader")}
    admin: MongoClient[Any] = MongoClient(secure_mongod.admin_uri)
    users = admin.admin
    # Field-level rights do not exist in MongoDB: a collection's update action is the finest.
    users.command("createRole", PORTAL_ROLE, privileges=[
        {"resource": {"db": database, "collection": "jobs"},
         "actions": ["find", "insert", "update", "changeStream"]},
        {"resource": {"db": database, "collection": "apps"}, "actions": ["find"]},
    ], roles=[])
    users.command("createUser", "execd", pwd=passwords["execd"],
                  roles=[{"role": "readWrite", "db": database}])
    users.command("createUser", "portal", pwd=passwords["portal"],
                  roles=[{"role": PORTAL_ROLE, "db": "admin"}])
    users.command("createUser", "reader", pwd=passwords["reader"],
                  roles=[{"role": "read", "db": database}])
    yield Site(secure_mongod, database, passwords)
    for user in passwords:
        users.command("dropUser", user)
    users.command("dropRole", PORTAL_ROLE)
    admin.drop_database(database)
    admin.close()


@pytest.fixture
def secure_engine(site: Site, tmp_path: Path) -> Iterator[Engine]:
    """A running daemon logging in as ``execd`` with credentials from a 0600 file."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    credentials = site.credentials_file(tmp_path, "execd")
    config = tmp_path / "execd.ini"
    config.write_text(textwrap.dedent(f"""\
        [engine]
        state_dir = {state_dir}
        log_level = DEBUG

        [mongodb]
        uri = {site.mongo.uri}
        database = {site.database}
        credentials_file = {credentials}

        [monitor]
        poll_interval = 0.5
        lease_seconds = 5
        recovery_interval = 0.5
        restart_backoff = 0.2

        [systems]
        [[local]]
        class = local
        slots = 2
        kill_grace = 2
        """))
    # The test itself reads and writes as the administrator.
    engine = Engine(config, state_dir, site.mongo.admin_uri, site.database)
    try:
        engine.start()
        yield engine
    finally:
        try:
            engine.stop()
        finally:
            engine.close()


def execd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(execd_command("-c", str(config), *args), capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)


def secrets(site: Site) -> list[str]:
    return [*site.passwords.values(), site.mongo.ADMIN_PASSWORD]


# ---------------------------------------------------------------------- the daemon and clients
def test_daemon_and_portal_work_with_credentials_that_are_never_shown(
        site: Site, secure_engine: Engine, tmp_path: Path) -> None:
    portal = site.client_config(tmp_path, "portal")
    submitted = execd(portal, "submit", "--name", "via-cli", "--", "sh", "-c", "echo hello")
    assert submitted.returncode == 0, submitted.stderr
    inserted = secure_engine.store.jobs.find_one({"name": "via-cli"})
    assert inserted is not None and str(inserted["_id"]) == submitted.stdout.strip()
    job_id = inserted["_id"]
    waited = execd(portal, "wait", str(job_id), "--timeout", "60")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    [doc] = secure_engine.wait_ended([job_id])
    assert doc["state"] == "finished" and doc["exit_code"] == 0
    assert (Path(doc["job_dir"]) / "job.stdout").read_text() == "hello\n"

    listed = execd(portal, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["name"] for j in json.loads(listed.stdout)] == ["via-cli"]

    with Client(config=portal) as client:  # the library, through the same configuration
        job = client.submit(["true"], name="via-library")
        assert job.wait(timeout=60) == "finished"

    status = execd(secure_engine.config_path, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"database: mongodb://execd:***@127.0.0.1:{site.mongo.port}/" in status.stdout
    assert "finished" in status.stdout

    shown = [secure_engine.log_file.read_text(), status.stdout, status.stderr,
             submitted.stdout, submitted.stderr, listed.stderr,
             (secure_engine.state_dir / "run" / "status.json").read_text()]
    assert "execd started" in shown[0] and "MongoDB mongodb://execd:***@" in shown[0]
    for secret in secrets(site):
        for text in shown:
            assert secret not in text


def test_read_only_client_cannot_submit(site: Site, tmp_path: Path) -> None:
    reader = site.client_config(tmp_path, "reader")
    admin: MongoClient[Any] = MongoClient(site.mongo.admin_uri)
    try:
        before = admin[site.database].jobs.count_documents({})
        listed = execd(reader, "jobs")
        assert listed.returncode == 0, listed.stderr
        refused = execd(reader, "submit", "--name", "not-allowed", "--", "true")
        assert refused.returncode == 1
        assert refused.stderr.startswith("execd: MongoDB mongodb://reader:***@127.0.0.1")
        assert "refused insert on collection 'jobs'" in refused.stderr
        assert f"in database {site.database!r} as user 'reader': not authorized" in refused.stderr
        assert "Traceback" not in refused.stderr and site.passwords["reader"] not in refused.stderr
        assert admin[site.database].jobs.count_documents({}) == before
        assert admin[site.database].jobs.count_documents({"name": "not-allowed"}) == 0
    finally:
        admin.close()


def test_wrong_password_is_a_clear_error_naming_the_database(site: Site, tmp_path: Path) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    for user in ("portal", "execd"):
        config = site.client_config(tmp_path, user, password=wrong)
        result = execd(config, "jobs")
        assert result.returncode == 1
        assert (f"cannot log in to MongoDB mongodb://{user}:***@127.0.0.1:{site.mongo.port}/"
                in result.stderr)
        assert f"as user {user!r} for database {site.database!r}: authentication failed" \
            in result.stderr
        assert "Traceback" not in result.stderr and wrong not in result.stderr

    # The daemon refuses to start, in the same words, and logs no password either.
    config = site.client_config(tmp_path, "execd", password=wrong)
    started = execd(config, "start")
    assert started.returncode == 1
    assert f"for database {site.database!r}: authentication failed" in started.stderr
    assert "Traceback" not in started.stderr and wrong not in started.stderr
    log_file = tmp_path / "execd-state" / "execd.log"
    deadline = time.monotonic() + 30  # the daemon answers `start` before its log is written
    while "execd stopped" not in (log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline, "the refused daemon did not log its stop"
        time.sleep(0.1)
    log = log_file.read_text()
    assert "cannot start: cannot log in to MongoDB" in log and wrong not in log
    assert execd(config, "status").returncode == 3


def test_credentials_may_be_given_in_the_uri(site: Site, tmp_path: Path) -> None:
    password = site.passwords["portal"]
    config = tmp_path / "portal-uri.ini"
    config.write_text(textwrap.dedent(f"""\
        [mongodb]
        uri = mongodb://portal:{password}@127.0.0.1:{site.mongo.port}/?replicaSet=rs0&authSource=admin
        database = {site.database}
        """))
    listed = execd(config, "jobs")
    assert listed.returncode == 0, listed.stderr
    assert load_config(config).mongodb.display_uri.startswith("mongodb://portal:***@")
    assert password not in repr(load_config(config))


def test_portal_role_allows_jobs_requests_only(site: Site, tmp_path: Path) -> None:
    """What the portal's custom role does and does not allow (docs/security.md): it may read,
    insert and update jobs, nothing else; MongoDB cannot narrow updates to some fields."""
    uri = load_config(site.client_config(tmp_path, "portal")).mongodb.uri
    portal: MongoClient[Any] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    db = portal[site.database]
    try:
        job_id = db.jobs.insert_one({"state": "to be built", "command": ["true"],
                                     "name": "portal-direct"}).inserted_id
        db.jobs.update_one({"_id": job_id}, {"$set": {"cancel_requested": True}})
        for refused in (lambda: db.jobs.delete_one({"_id": job_id}),
                        db.jobs.drop,
                        lambda: db.daemons.insert_one({"_id": "forged"}),
                        lambda: db.apps.insert_one({"name": "forged"}),
                        lambda: db.jobs.create_index("owner")):
            with pytest.raises(OperationFailure) as caught:
                refused()
            assert caught.value.code == 13
            assert "not authorized" in describe_database_error(caught.value, uri, site.database)
    finally:
        portal.close()


# ---------------------------------------------------------------------- the credentials file
def write_credentials(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "mongodb.credentials"
    path.write_text(text)
    path.chmod(mode)
    return path


def config_text(credentials: Path, uri: str = "mongodb://db1:27017/?replicaSet=rs0") -> str:
    return f"[mongodb]\nuri = {uri}\ncredentials_file = {credentials}\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o606])
def test_credentials_file_accessible_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_credentials(tmp_path, "username = execd\npassword = s3cret\n", mode)
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text(path))
    message = str(caught.value)
    assert f"[mongodb] credentials_file {path}" in message
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message
    assert "s3cret" not in message


def test_credentials_file_goes_into_the_uri(tmp_path: Path) -> None:
    path = write_credentials(tmp_path, "# comment\nusername = execd\npassword = p@ss:w/rd\n"
                             "auth_source = admin\n", 0o600)
    section = parse_config(config_text(path)).mongodb
    assert section.uri == ("mongodb://execd:p%40ss%3Aw%2Frd@db1:27017/?replicaSet=rs0"
                           "&authSource=admin")
    assert section.display_uri == "mongodb://execd:***@db1:27017/?replicaSet=rs0&authSource=admin"
    assert section.credentials_file == path
    assert "p@ss" not in repr(section) and "p%40ss" not in repr(section)
    # relative to the configuration file's folder
    config = tmp_path / "execd.ini"
    config.write_text(config_text(Path("mongodb.credentials")))
    assert load_config(config).mongodb.credentials_file == path


@pytest.mark.parametrize(("text", "uri", "expected"), [
    ("username = execd\n", "mongodb://db1/", "no password"),
    ("password = x\n", "mongodb://db1/", "no username"),
    ("username = execd\npassword = x\ncolour = red\n", "mongodb://db1/", "unknown key 'colour'"),
    ("username execd\n", "mongodb://db1/", "line 1 is not 'key = value'"),
    ("username = execd\npassword = x\n", "mongodb://u:p@db1/", "in one place only"),
    ("username = execd\npassword = x\n", "", "embedded MongoDB takes no credentials"),
])
def test_bad_credentials_settings_are_refused(tmp_path: Path, text: str, uri: str,
                                              expected: str) -> None:
    path = write_credentials(tmp_path, text, 0o600)
    with pytest.raises(ConfigError, match=expected):
        parse_config(config_text(path, uri))


def test_missing_credentials_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"credentials_file .*missing\.credentials: cannot be "):
        parse_config(config_text(tmp_path / "missing.credentials"))


# ---------------------------------------------------------------------- redaction
@pytest.mark.parametrize(("uri", "shown"), [
    ("mongodb://127.0.0.1:27017/?replicaSet=rs0", "mongodb://127.0.0.1:27017/?replicaSet=rs0"),
    ("mongodb://u:pw@h1,h2/db?tls=true&tlsCAFile=/etc/ca.pem",
     "mongodb://u:***@h1,h2/db?tls=true&tlsCAFile=/etc/ca.pem"),
    ("mongodb+srv://u:pw@cluster.example.org/?tlsCertificateKeyFilePassword=pw",
     "mongodb+srv://u:***@cluster.example.org/?tlsCertificateKeyFilePassword=***"),
    ("mongodb://u@h/?authMechanism=MONGODB-X509", "mongodb://u@h/?authMechanism=MONGODB-X509"),
    # Not encoded as it must be: still hidden whole.
    ("mongodb://u:p/w?d@x@h/", "mongodb://u:***@h/"),
])
def test_uris_are_shown_without_secrets(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_credentials_are_encoded_and_keep_the_options() -> None:
    made = with_credentials("mongodb://h:1", Credentials("a b", "x&y", "admin", "SCRAM-SHA-256"))
    assert made == "mongodb://a+b:x%26y@h:1/?authSource=admin&authMechanism=SCRAM-SHA-256"
    assert uri_user(made) == "a b"
    kept = with_credentials("mongodb://h/?authSource=other", Credentials("u", "p", "admin"))
    assert kept == "mongodb://u:p@h/?authSource=other"
