"""Owner claims (``[identity] require_claim``, ``[[clients]]``): signing and checking, the
clients' configuration and secret files, the job fields, and jobs through a running daemon that
runs each signed job as its owner's account and nothing for a job whose claim does not hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from execution_engine.client import Client
from execution_engine.config import parse_config
from execution_engine.errors import ConfigError
from execution_engine.identity import (
    Account,
    ClaimClient,
    IdentitySection,
    OwnerRefused,
    check_claim,
    parse_identity_section,
    read_secret_file,
    sign_claim,
)
from execution_engine.identity import config as identity_config
from execution_engine.identity.claims import claim_text
from execution_engine.jobdoc import check_job
from tests.conftest import Engine
from tests.support.accounts import LocalAccounts, write_map

SECRET = b"s3cr3t-" + b"x" * 40
OTHER_SECRET = b"other-" + b"y" * 40
ALICE = "alice@test.example"
BOB = "bob@test.example"
JOB_ID = ObjectId("65a1b2c3d4e5f60718293a4b")


def section(*, require_claim: bool = False, owners: str = ".*",
            projects: tuple[str, ...] = (), secret: bytes | None = SECRET) -> IdentitySection:
    return IdentitySection(
        mapping="pattern", map_file=None, pattern="(?P<user>[a-z]+)@test\\.example",
        account="{user}", require_claim=require_claim,
        clients={"portal": ClaimClient("portal", secret, owners=owners, projects=projects)})


def signed(owner: str = ALICE, project: str | None = None, *, job_id: Any = JOB_ID,
           secret: bytes = SECRET, client: str = "portal") -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": job_id, "state": "to be built", "command": ["id", "-u"],
                           "owner": owner}
    if project is not None:
        doc["project"] = project
    doc["client"] = client
    doc["claim"] = sign_claim(secret, str(job_id), owner, project or "default")
    return doc


def refusal(identity: IdentitySection, job: Mapping[str, Any]) -> OwnerRefused:
    with pytest.raises(OwnerRefused) as info:
        check_claim(identity, job)
    message = str(info.value)
    # Neither the secret nor the claim the job should have carried is ever shown.
    assert SECRET.decode() not in message and OTHER_SECRET.decode() not in message
    assert sign_claim(SECRET, str(job.get("_id")), str(job.get("owner")),
                      str(job.get("project", "default"))) not in message
    assert info.value.mapping == "claims of [identity] clients"
    return info.value


# ---------------------------------------------------------------------- signing and checking
def test_claim_text_and_signature_are_fixed() -> None:
    assert claim_text("j1", ALICE, "default") == \
        b"execd-claim-v1\nj1\nalice@test.example\ndefault"
    claim = sign_claim(SECRET, "j1", ALICE, "default")
    assert len(claim) == 64 and claim == claim.lower()
    assert claim == sign_claim(SECRET, "j1", ALICE, "default")
    assert claim != sign_claim(OTHER_SECRET, "j1", ALICE, "default")


@pytest.mark.parametrize("require_claim", [False, True])
def test_a_valid_claim_passes(require_claim: bool) -> None:
    check_claim(section(require_claim=require_claim), signed())
    check_claim(section(require_claim=require_claim), signed(project="bio"))
    check_claim(section(), signed(job_id="my-job.1"))  # a client-chosen string id


def test_a_claim_made_with_another_secret_is_refused() -> None:
    refused = refusal(section(), signed(secret=OTHER_SECRET))
    assert "the claim of client 'portal' does not hold for this job's id, owner and " \
           "project" in str(refused)
    assert refused.owner == ALICE


def test_a_claim_copied_to_another_job_is_refused() -> None:
    alices = signed()
    forged = {**signed(BOB, job_id=ObjectId()), "claim": alices["claim"]}
    refusal(section(), forged)
    # The same claim on a job of the same owner but another id.
    refusal(section(), {**alices, "_id": ObjectId()})


@pytest.mark.parametrize("change", [{"owner": BOB}, {"project": "other"},
                                    {"project": "default"}])
def test_an_owner_or_project_changed_after_signing_is_refused(change: dict[str, str]) -> None:
    doc = signed(project="bio")
    check_claim(section(), doc)
    refusal(section(), {**doc, **change})


def test_the_default_project_is_signed_as_default() -> None:
    doc = signed()
    assert "project" not in doc
    check_claim(section(), {**doc, "project": "default"})  # what the build writes
    check_claim(section(), {**doc, "project": ""})          # the engine's default too


def test_an_unknown_client_is_refused() -> None:
    refused = refusal(section(), signed(client="intruder"))
    assert "client 'intruder' is not a client of [identity] [[clients]]" in str(refused)


def test_an_owner_the_client_may_not_claim_is_refused() -> None:
    identity = section(owners=r"[a-z]+@test\.example")
    check_claim(identity, signed())
    refused = refusal(identity, signed("eve@elsewhere.example"))
    assert "client 'portal' may not claim this owner" in str(refused)
    assert r"owners = [a-z]+@test\.example" in str(refused)
    # Matched whole: a prefix is not enough.
    refusal(identity, signed("alice@test.example.evil"))


def test_a_project_the_client_may_not_claim_is_refused() -> None:
    identity = section(projects=("bio", "default"))
    check_claim(identity, signed(project="bio"))
    check_claim(identity, signed())
    refused = refusal(identity, signed(project="chem"))
    assert "client 'portal' may not claim project 'chem'" in str(refused)


def test_require_claim_refuses_a_job_without_one() -> None:
    unsigned = {"_id": JOB_ID, "command": ["true"], "owner": ALICE}
    refused = refusal(section(require_claim=True), unsigned)
    assert "carries no owner claim" in str(refused) and "require_claim" in str(refused)
    check_claim(section(require_claim=False), unsigned)


@pytest.mark.parametrize("fields", [
    {"client": "portal"},
    {"claim": "0" * 64},
    {"client": "portal", "claim": None},
    {"client": 7, "claim": "0" * 64},
])
def test_half_a_claim_is_never_ignored(fields: dict[str, Any]) -> None:
    doc = {"_id": JOB_ID, "command": ["true"], "owner": ALICE, **fields}
    refusal(section(require_claim=False), doc)


@pytest.mark.parametrize("claim", ["", "zz" * 32, "0" * 63, "0" * 65, "é" * 64, "\0" * 64,
                                   "x" * 10_000])
def test_a_garbage_claim_is_refused_without_an_exception(claim: str) -> None:
    refusal(section(), {**signed(), "claim": claim})
    refusal(section(), {**signed(), "claim": claim.upper()})


def test_an_uppercase_claim_is_not_the_claim() -> None:
    doc = signed()
    refusal(section(), {**doc, "claim": doc["claim"].upper()})


@pytest.mark.parametrize("owner", [None, "", 5])
def test_a_signed_job_needs_an_owner(owner: Any) -> None:
    refusal(section(), {**signed(), "owner": owner})


def test_a_client_whose_secret_this_process_could_not_read_verifies_nothing() -> None:
    refusal(section(secret=None), signed())


# ---------------------------------------------------------------------- the job fields
def test_client_and_claim_are_job_fields() -> None:
    def problems(doc: dict[str, Any]) -> list[str]:
        return check_job(doc, max_command_bytes=1 << 20, max_document_bytes=1 << 20)

    assert problems(signed()) == []
    assert any(p.startswith("client:") for p in problems({**signed(), "client": 3}))
    assert any(p.startswith("claim:") for p in problems({**signed(), "claim": ["x"]}))
    assert any(p.startswith("claim:") for p in problems({**signed(), "claim": "zz" * 32}))


# ---------------------------------------------------------------------- configuration
def secret_file(tmp_path: Path, content: bytes = SECRET + b"\n", mode: int = 0o600,
                name: str = "portal.secret") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(mode)
    return path


def clients_config(path: Path, extra: str = "") -> str:
    return ("[identity]\nmapping = pattern\npattern = (?P<user>[a-z]+)@test\\.example\n"
            f"require_claim = true\n{extra}[[clients]]\n[[[portal]]]\nsecret_file = {path}\n"
            "owners = .*@test\\.example\nprojects = bio, default\n")


def test_clients_parse_with_their_secrets(tmp_path: Path) -> None:
    path = secret_file(tmp_path, b"  " + SECRET + b"\n\n")
    identity = parse_config(clients_config(path)).identity
    assert identity.require_claim
    portal = identity.clients["portal"]
    assert (portal.secret, portal.owners, portal.projects) == \
        (SECRET, ".*@test\\.example", ("bio", "default"))
    assert SECRET.decode() not in repr(identity)


def test_pools_and_clients_parse_together(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    text = ("[identity]\nmapping = pool\nrequire_claim = true\n[[pools]]\nbio = b1, b2\n"
            f"[[clients]]\n[[[portal]]]\nsecret_file = {path}\n[[[lab]]]\n"
            f"secret_file = {path}\nowners = \"[a-z]{{1,8}}@lab\\.example\"\n")
    config = parse_config(text)
    assert config.identity.pools == {"bio": ("b1", "b2")}
    assert set(config.identity.clients) == {"portal", "lab"}
    assert config.identity.clients["portal"].owners == ".*"
    assert config.identity.clients["lab"].owners == "[a-z]{1,8}@lab\\.example"
    assert config.identity.clients["portal"].projects == ()


def test_a_relative_secret_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    secret_file(tmp_path)
    config = tmp_path / "execd.ini"
    config.write_text(clients_config(Path("portal.secret")))
    identity = parse_config(config.read_text(), config).identity
    assert identity.clients["portal"].secret == SECRET


def test_the_defaults_have_no_clients() -> None:
    identity = parse_identity_section({}, Path("/"))
    assert (identity.require_claim, identity.clients) == (False, {})


WHERE = "[identity] [[clients]] [[[portal]]]"


@pytest.mark.parametrize(("mode", "content", "message"), [
    (0o644, SECRET, "(owner uid 0, mode 644): it holds a client's secret (chmod 600"),
    (0o640, SECRET, "mode 640"),
    (0o604, SECRET, "mode 604"),
    (0o600, b"short\n", "holds 5 bytes; a secret needs at least 32"),
    (0o600, b" " * 40 + b"\n", "holds 0 bytes"),
])
def test_a_bad_secret_file_is_refused_naming_the_key(tmp_path: Path, mode: int,
                                                      content: bytes, message: str) -> None:
    path = secret_file(tmp_path, content, mode)
    with pytest.raises(ConfigError) as info:
        parse_config(clients_config(path))
    assert f"{WHERE} secret_file: {path}" in str(info.value)
    assert message in str(info.value)
    assert SECRET.decode() not in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("[[clients]]\n[[[portal]]]\nsecret_file = /nonexistent/portal.secret\n",
     f"{WHERE} secret_file: cannot read /nonexistent/portal.secret: No such file"),
    ("[[clients]]\n[[[portal]]]\nowners = .*\n", f"{WHERE} secret_file: missing"),
    ("[[clients]]\n[[[portal]]]\nsecret_file = /dev/null\n", f"{WHERE} secret_file: "
                                                             "/dev/null is not a regular file"),
    ("[[clients]]\nportal = x\n", "[identity][clients] portal: unknown key or section"),
    ("[[clients]]\n[[[portal]]]\nsecret = x\n",
     "[identity][clients][portal] secret: unknown key or section"),
    ("require_claim = true\n", "[identity] require_claim: on, but [[clients]] names no client"),
    ("require_claim = maybe\n", "[identity] require_claim: the value \"maybe\" is of the "
                                "wrong type"),
])
def test_client_config_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[identity]\nmapping = pattern\npattern = (?P<user>.+)\n{text}")
    assert message in str(info.value)


def test_a_bad_owners_expression_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    text = f"[identity]\n[[clients]]\n[[[portal]]]\nsecret_file = {path}\nowners = (a\n"
    with pytest.raises(ConfigError, match=r"\[identity\] \[\[clients\]\] \[\[\[portal\]\]\] "
                                          r"owners: '\(a' is not a valid regular expression"):
        parse_config(text)


def test_a_process_that_may_not_read_the_secret_is_not_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's client command reads the configuration too; only the daemon needs the
    secret, so a secret file it may not read is left unread (and verifies nothing)."""
    path = secret_file(tmp_path)
    monkeypatch.setattr(identity_config.os, "geteuid", lambda: 54321)
    monkeypatch.setattr(identity_config.os, "access", lambda *args, **kwargs: False)
    assert read_secret_file(path) is None
    assert parse_config(clients_config(path)).identity.clients["portal"].secret is None
    # The signing client's own reading of it (execd submit --claim-secret-file) is required.
    assert read_secret_file(path, required=True) == SECRET
    with pytest.raises(ValueError, match=r"cannot read .*: No such file"):
        read_secret_file(tmp_path / "missing")


# ---------------------------------------------------------------------- through a daemon
class Site:
    def __init__(self, engine: Engine, secret: Path, accounts: dict[str, Account]) -> None:
        self.engine = engine
        self.secret = secret
        self.accounts = accounts

    def client(self, secret: bytes = SECRET) -> Client:
        return Client(self.engine.mongo_uri, database=self.engine.database,
                      claim_as=("portal", secret))


@pytest.fixture
def site(engine_factory: Callable[..., Engine], local_accounts: LocalAccounts,
         open_jobs_dir: Path, tmp_path: Path) -> Site:
    accounts = {"a": local_accounts.account("a"), "b": local_accounts.account("b")}
    map_file = tmp_path / "owners.map"
    write_map(map_file, {ALICE: accounts["a"].name, BOB: accounts["b"].name})
    secret = secret_file(tmp_path)
    engine = engine_factory(
        f"[identity]\nmapping = map\nmap_file = {map_file}\nrequire_claim = true\n"
        f"[[clients]]\n[[[portal]]]\nsecret_file = {secret}\nowners = .*@test\\.example\n\n"
        "[systems]\n[[local]]\nclass = local\nslots = 4\nkill_grace = 2\n",
        jobs_dir=open_jobs_dir)
    return Site(engine, secret, accounts)


def stdout_of(doc: dict[str, Any]) -> list[str]:
    return Path(doc["job_dir"], "job.stdout").read_text().split()


def test_signed_jobs_run_as_their_owners_and_others_run_nothing(site: Site) -> None:
    a, b = site.accounts["a"], site.accounts["b"]
    flag = Path(tempfile.gettempdir(), f"execd-ran-{os.urandom(4).hex()}")
    with site.client() as client:
        alices = client.submit(["id", "-u"], owner=ALICE, notify=False)
        assert isinstance(alices.id, ObjectId) and alices.document["client"] == "portal"
    with site.client(OTHER_SECRET) as client:
        wrong_secret = client.submit(["touch", str(flag)], owner=BOB, notify=False)
    unsigned = site.engine.submit("touch", str(flag), owner=BOB, notify=False)
    copied_id = ObjectId()
    copied = site.engine.insert({
        "_id": copied_id, "state": "to be built", "command": ["touch", str(flag)],
        "owner": BOB, "notify": False, "client": "portal", "claim": alices.document["claim"]})
    # The command-line client signs too.
    out = site.engine.cli("submit", "--owner", BOB, "--no-notify", "--client", "portal",
                          "--claim-secret-file", str(site.secret), "--", "id", "-u").stdout
    bobs = ObjectId(out.strip())

    ids = [alices.id, bobs, wrong_secret.id, unsigned, copied]
    ran_a, ran_b, *refused = site.engine.wait_ended(ids)
    assert ran_a["state"] == "finished", ran_a.get("status_message")
    assert stdout_of(ran_a) == [str(a.uid)] and ran_a["account"]["name"] == a.name
    assert ran_b["state"] == "finished", ran_b.get("status_message")
    assert stdout_of(ran_b) == [str(b.uid)] and ran_b["client"] == "portal"
    for doc in refused:
        assert (doc["state"], doc["reason"]) == ("error", "no_account"), doc
        assert "native_id" not in doc and "account" not in doc
        assert SECRET.decode() not in doc["status_message"]
    assert "carries no owner claim" in refused[1]["status_message"]
    assert "does not hold" in refused[0]["status_message"]
    assert "does not hold" in refused[2]["status_message"]
    assert not flag.exists(), "a job without a valid claim ran"


def test_a_signed_job_needs_an_owner_client_side(site: Site) -> None:
    with site.client() as client, pytest.raises(ValueError, match="needs an owner"):
        client.submit(["true"])
    result = site.engine.cli("submit", "--client", "portal", "--", "true", check=False)
    assert result.returncode != 0
    assert "needs both --client and --claim-secret-file" in result.stderr


def test_the_subjobs_of_a_signed_split_job_are_signed_by_the_engine(site: Site) -> None:
    """Subjobs are documents the engine writes: it signs them for the master's client once
    the master's claim held, so that they run (as the master's account) where claims are
    required; the master's directory is the account's too."""
    a = site.accounts["a"]
    site.engine.cli("app", "add", str(Path(__file__).parent / "apps" / "square"))
    with site.client() as client:
        master = client.submit(app="square", splitter={"input": "n", "range": [0, 3]},
                               owner=ALICE, notify=False)
    (doc,) = site.engine.wait_ended([master.id], timeout=120)
    assert doc["state"] == "finished", doc.get("status_message")
    subjobs = list(site.engine.store.jobs.find({"parent": master.id}))
    assert len(subjobs) == 3
    for sub in subjobs:
        assert sub["state"] == "finished" and sub["account"]["name"] == a.name
        assert sub["client"] == "portal" and len(sub["claim"]) == 64
    assert Path(doc["job_dir"]).stat().st_uid == a.uid
