"""Jobs run as their owners' accounts, through a running daemon on the Local system: real
accounts (``useradd``, made by the ``local_accounts`` fixture), a map file from owners to them,
job directories private to each account, refused owners that run nothing, a map file changed by
a reload, and a job that plants links to files it may not read.

The daemon runs as root here (as it must to run jobs as other accounts); the jobs directory is
one every account can reach (``/var/tmp``: pytest's own folders are root's alone).
"""

from __future__ import annotations

import grp
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from execution_engine.identity import Account
from tests.conftest import Engine
from tests.support.accounts import LocalAccounts, write_map
from tests.support.local_slots import BUSY_SYSTEM, hold_local_slot
from tests.test_apps_e2e import add_app

ALICE = "alice@test.example"
BOB = "bob@test.example"


class Site:
    """A daemon mapping owners to accounts with a map file."""

    def __init__(self, engine: Engine, map_file: Path, accounts: dict[str, Account]) -> None:
        self.engine = engine
        self.map_file = map_file
        self.accounts = accounts

    def run(self, owner: str, script: str, **fields: Any) -> dict[str, Any]:
        job = self.engine.submit("sh", "-c", script, owner=owner, notify=False, **fields)
        (doc,) = self.engine.wait_ended([job])
        return doc


@pytest.fixture
def site(engine_factory: Callable[..., Engine], local_accounts: LocalAccounts,
         open_jobs_dir: Path, tmp_path: Path) -> Site:
    accounts = {"a": local_accounts.account("a"), "b": local_accounts.account("b"),
                "system": local_accounts.account("sys", system=True)}
    map_file = tmp_path / "owners.map"
    write_map(map_file, {ALICE: accounts["a"].name, BOB: accounts["b"].name,
                         "root@test.example": "root", "daemon@test.example": "daemon",
                         "system@test.example": accounts["system"].name,
                         "ghost@test.example": local_accounts.name("ghost")})
    engine = engine_factory(
        f"[identity]\nmapping = map\nmap_file = {map_file}\n\n"
        "[systems]\n[[local]]\nclass = local\nslots = 4\nkill_grace = 2\n",
        jobs_dir=open_jobs_dir)
    return Site(engine, map_file, accounts)


def stdout_of(doc: dict[str, Any]) -> list[str]:
    return Path(doc["job_dir"], "job.stdout").read_text().split()


def test_each_owner_runs_as_their_account_in_a_private_directory(site: Site) -> None:
    a, b = site.accounts["a"], site.accounts["b"]
    bobs = site.run(BOB, 'id -u; id -g; id -G; echo "$HOME" "$USER" "$LOGNAME"; '
                         "echo secret > secret.txt")
    assert bobs["state"] == "finished", bobs.get("status_message")
    uid, gid, groups, home, user, logname = stdout_of(bobs)
    assert (int(uid), int(gid)) == (b.uid, b.gid)
    assert {int(g) for g in groups.split(",") if g} <= set(b.groups) | {b.gid}
    assert (home, user, logname) == (b.home, b.name, b.name)
    assert bobs["account"] == {"name": b.name, "uid": b.uid}
    shown = site.engine.cli("show", str(bobs["_id"])).stdout
    assert f"runs as:        {b.name} (uid {b.uid})" in shown
    info = Path(bobs["job_dir"]).stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (b.uid, 0o700)
    assert Path(bobs["job_dir"], "secret.txt").stat().st_uid == b.uid

    # Alice's job tries to read Bob's file: refused by the file system, not by the engine.
    alices = site.run(ALICE, f"id -u; cat {bobs['job_dir']}/secret.txt")
    assert (alices["state"], alices["reason"]) == ("error", "nonzero_exit")
    assert stdout_of(alices) == [str(a.uid)]
    assert "Permission denied" in Path(alices["job_dir"], "job.stderr").read_text()


@pytest.mark.parametrize(("owner", "why"), [
    ("root@test.example", "uid 0"),
    ("daemon@test.example", "below the uid floor"),
    ("system@test.example", "below the uid floor"),
    ("ghost@test.example", "no such local account"),
    ("nobody-mapped@test.example", "not in map file"),
])
def test_an_owner_without_an_account_it_may_run_as_runs_nothing(site: Site, owner: str,
                                                                  why: str) -> None:
    flag = Path(tempfile.gettempdir(), f"execd-ran-{os.urandom(4).hex()}")
    doc = site.run(owner, f"touch {flag}")
    assert (doc["state"], doc["reason"]) == ("error", "no_account"), doc.get("status_message")
    assert owner in doc["status_message"] and why in doc["status_message"]
    assert str(site.map_file) in doc["status_message"]
    assert "native_id" not in doc and "account" not in doc
    assert not flag.exists(), "the job ran"


def test_a_reloaded_map_file_applies_to_new_jobs_only(site: Site) -> None:
    a, b = site.accounts["a"], site.accounts["b"]
    before = site.run(ALICE, "id -u")
    write_map(site.map_file, {ALICE: b.name})
    site.engine.cli("reload")
    after = site.run(ALICE, "id -u")
    assert stdout_of(before) == [str(a.uid)] and before["account"]["name"] == a.name
    assert stdout_of(after) == [str(b.uid)] and after["account"]["name"] == b.name
    assert site.engine.store.get(before["_id"])["account"]["name"] == a.name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_links_a_job_plants_in_its_directory_are_never_followed_by_the_daemon(
        site: Site, tmp_path: Path) -> None:
    """The job replaces its own records and outputs by links to /etc/shadow (which only root
    may read) and to root's files; the daemon, as root, neither reads nor writes through them:
    the job still ends with a definite state, and nothing of those files reaches the job's
    document or changes."""
    shadow = Path("/etc/shadow")
    before = sha256(shadow)
    doc = site.run(ALICE, (
        "ln -s /etc/shadow stolen.txt; ln -s /etc/shadow .execd/usage; "
        "ln -s /etc/shadow .execd/native_id; ln -s /root .execd/outputs; "
        "rm -f .execd/pid; ln -s /etc/shadow .execd/pid; exit 3"))
    assert doc["state"] == "error" and doc["reason"] in ("nonzero_exit", "unknown"), doc
    assert sha256(shadow) == before
    text = repr(doc)
    assert "root:" not in text and "$y$" not in text and "$6$" not in text
    assert all(not str(o).endswith("stolen.txt") for o in doc.get("outputs", []) or []), doc
    fetched = tmp_path / "fetched"
    site.engine.cli("fetch", str(doc["_id"]), str(fetched), check=False)
    assert not (fetched / "stolen.txt").exists()
    assert all("root:" not in f.read_text(errors="replace") for f in fetched.glob("*"))


def test_a_reload_with_a_broken_map_file_is_refused_and_the_map_in_use_stays(site: Site) -> None:
    a = site.accounts["a"]
    site.map_file.write_text(f"{ALICE} {a.name}\n{BOB}\n")
    refused = site.engine.cli("reload", check=False)
    assert refused.returncode != 0
    assert f"{site.map_file}:2: expected 'owner account'" in refused.stdout + refused.stderr
    site.map_file.write_text(f"{ALICE} {a.name}\n")
    site.map_file.chmod(0o666)
    refused = site.engine.cli("reload", check=False)
    assert refused.returncode != 0 and "may be changed by others" in refused.stderr
    doc = site.run(BOB, "id -u")  # the map read at start still holds
    assert stdout_of(doc) == [str(site.accounts["b"].uid)]


def test_a_daemon_not_running_as_root_refuses_to_map_owners(local_accounts: LocalAccounts,
                                                            open_jobs_dir: Path) -> None:
    """The check the daemon makes at start and at each reload, run as an ordinary account
    (which may read the map file here: the refusal is for want of root, not of the file)."""
    account = local_accounts.account("a")
    map_file = open_jobs_dir.parent / "owners.map"
    write_map(map_file, {ALICE: account.name})
    program = ("from pathlib import Path\n"
               "from execution_engine.identity import check_privilege, parse_identity_section\n"
               f"check_privilege(parse_identity_section({{'mapping': 'off'}}, Path('/')))\n"
               f"check_privilege(parse_identity_section({{'mapping': 'map', "
               f"'map_file': {str(map_file)!r}}}, Path('/')))\n")
    result = subprocess.run(["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}",
                             "--clear-groups", "--", sys.executable, "-c", program],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 1, result.stderr
    assert "needs the daemon to run as root" in result.stderr
    assert f"it runs as uid {account.uid}" in result.stderr


def test_inputs_are_staged_as_the_account_would_read_them(site: Site, tmp_path: Path,
                                                          open_jobs_dir: Path) -> None:
    """An application job's file inputs: one the account may read is copied and becomes the
    account's; one in another account's private folder, and /etc/shadow, are refused at the
    build although root could read them, and nothing runs."""
    a, b = site.accounts["a"], site.accounts["b"]
    add_app(site.engine, "linecount")
    shared = open_jobs_dir.parent / "shared.txt"
    shared.write_text("one\ntwo\n")
    private = Path(b.home) / "private"
    private.mkdir(mode=0o700)
    os.chown(private, b.uid, b.gid)
    secret = private / "secret.txt"
    secret.write_text("bob's\n")
    secret.chmod(0o644)  # readable by all, but its folder is Bob's alone

    def linecount(path: Path) -> dict[str, Any]:
        job = site.engine.insert({"state": "to be built", "app": {"name": "linecount"},
                                  "owner": ALICE, "notify": False, "inputs": [
                                      {"name": "text", "type": "file", "path": str(path),
                                       "action": "COPY"}]})
        (doc,) = site.engine.wait_ended([job])
        return doc

    done = linecount(shared)
    assert done["state"] == "finished", done.get("status_message")
    staged = next(Path(done["job_dir"]).glob("*shared.txt"))
    assert (staged.stat().st_uid, staged.read_text()) == (a.uid, "one\ntwo\n")
    for path, why in ((secret, f"account {a.name} may not enter {private}"),
                      (Path("/etc/shadow"), f"account {a.name} may not read /etc/shadow")):
        refused = linecount(path)
        assert (refused["state"], refused["reason"]) == ("error", "build_failed"), refused
        assert why in refused["status_message"]
        assert "native_id" not in refused


def test_pool_accounts_are_leased_per_owner_through_the_daemon(
        engine_factory: Callable[..., Engine], local_accounts: LocalAccounts,
        open_jobs_dir: Path) -> None:
    """Two pool accounts for project bio: each owner gets one and keeps it, a third owner finds
    the pool exhausted and runs nothing; the leases are in the database for all to see."""
    pool = [local_accounts.account("p1"), local_accounts.account("p2")]
    engine = engine_factory(
        "[identity]\nmapping = pool\n[[pools]]\n"
        f"bio = {pool[0].name}, {pool[1].name}\n\n"
        "[systems]\n[[local]]\nclass = local\nslots = 4\n", jobs_dir=open_jobs_dir)

    def run(owner: str) -> dict[str, Any]:
        job = engine.submit("id", "-un", owner=owner, project="bio", notify=False)
        (doc,) = engine.wait_ended([job])
        return doc

    first, second, again = run(ALICE), run(BOB), run(ALICE)
    names = {p.name for p in pool}
    assert first["state"] == second["state"] == again["state"] == "finished"
    assert {first["account"]["name"], second["account"]["name"]} == names
    assert again["account"] == first["account"]
    assert stdout_of(again) == [first["account"]["name"]]
    exhausted = run("carol@test.example")
    assert (exhausted["state"], exhausted["reason"]) == ("error", "no_account")
    assert "bio" in exhausted["status_message"]
    leases = {d["_id"]: d["owner"] for d in engine.store.db["account_leases"].find()}
    assert leases == {first["account"]["name"]: ALICE, second["account"]["name"]: BOB}


def test_a_job_run_as_its_account_is_cancelled_and_holds_its_slot(
        engine_factory: Callable[..., Engine], local_accounts: LocalAccounts,
        open_jobs_dir: Path, tmp_path: Path) -> None:
    """One Local slot, two owners: the second job starts only once the first, cancelled while it
    runs as its account, has let go of the slot; the cancel reaches the whole process group."""
    a, b = local_accounts.account("a"), local_accounts.account("b")
    map_file = tmp_path / "owners.map"
    write_map(map_file, {ALICE: a.name, BOB: b.name})
    engine = engine_factory(f"[identity]\nmapping = map\nmap_file = {map_file}\n\n"
                            "[systems]\n[[local]]\nclass = local\nslots = 1\nkill_grace = 2\n",
                            jobs_dir=open_jobs_dir)
    first = engine.submit("sh", "-c", "sleep 600 & sleep 600", owner=ALICE, notify=False)
    second = engine.submit("date", "+%s.%N", owner=BOB, notify=False)
    engine.wait_for(lambda: (engine.store.get(first) or {}).get("state") == "running",
                    what="the first job to run")
    pgid = int(engine.store.get(first)["native_id"].split(":")[0])
    time.sleep(2)
    assert (engine.store.get(second) or {}).get("state") != "finished", "the slot did not hold"
    assert {Path(f"/proc/{pid}").stat().st_uid for pid in group_members(pgid)} == {a.uid}
    engine.store.request_cancel(first)
    cancelled, after = engine.wait_ended([first, second])
    assert (cancelled["state"], cancelled["reason"]) == ("killed", "cancelled"), cancelled
    assert not group_members(pgid), "a process of the cancelled job outlived it"
    assert after["state"] == "finished"
    assert float(stdout_of(after)[0]) >= cancelled["ended_at"].timestamp() - 1


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def test_group_access_lets_a_portal_group_read_job_directories(
        engine_factory: Callable[..., Engine], local_accounts: LocalAccounts,
        open_jobs_dir: Path, tmp_path: Path) -> None:
    portal = local_accounts.group("portal")
    a = local_accounts.account("a")
    map_file = tmp_path / "owners.map"
    write_map(map_file, {ALICE: a.name})
    engine = engine_factory(f"[identity]\nmapping = map\nmap_file = {map_file}\n"
                            f"group_access = {portal}\n\n"
                            "[systems]\n[[local]]\nclass = local\nslots = 1\n",
                            jobs_dir=open_jobs_dir)
    (doc,) = engine.wait_ended([engine.submit("true", owner=ALICE, notify=False)])
    info = Path(doc["job_dir"]).stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        a.uid, grp.getgrnam(portal).gr_gid, 0o750)


def test_a_reload_between_build_and_submission_never_runs_a_job_as_another_account(
        engine_factory: Callable[..., Engine], local_accounts: LocalAccounts,
        open_jobs_dir: Path, tmp_path: Path) -> None:
    """A job built for Alice's account waits for a slot; a reload then maps Alice to Bob's
    account; another, built for Bob's, waits while a reload turns mapping off. Neither runs as
    the other account nor as the daemon (root): both end no_account, saying why."""
    a, b = local_accounts.account("a"), local_accounts.account("b")
    map_file = tmp_path / "owners.map"
    write_map(map_file, {ALICE: a.name})
    engine = engine_factory(f"[identity]\nmapping = map\nmap_file = {map_file}\n\n"
                            "[systems]\n[[local]]\nclass = local\n"
                            + textwrap.dedent(BUSY_SYSTEM),
                            start=False, jobs_dir=open_jobs_dir)
    engine.start()

    def built_then_reloaded(built_for: Account, change: Callable[[], None]) -> dict[str, Any]:
        slot = hold_local_slot(engine.state_dir, "busy")
        try:
            job = engine.submit("id", "-u", owner=ALICE, project="busy", notify=False)
            engine.wait_for(lambda: engine.store.jobs.count_documents(
                {"_id": job, "state": "to be submitted", "account.name": built_for.name}) == 1,
                what="the job built, waiting for the slot")
            change()
            engine.cli("reload")
        finally:
            os.close(slot)
        (doc,) = engine.wait_ended([job])
        assert (doc["state"], doc["reason"]) == ("error", "no_account"), doc
        assert not Path(doc["job_dir"], "job.stdout").exists(), "the job ran"
        return doc

    remapped = built_then_reloaded(a, lambda: write_map(map_file, {ALICE: b.name}))
    assert (f"now maps to account {b.name}, but its job directory was built for account "
            f"{a.name}") in remapped["status_message"]
    config = engine.config_path.read_text()
    unmapped = built_then_reloaded(b, lambda: engine.config_path.write_text(
        config.replace("mapping = map", "mapping = off")))
    assert "[identity] mapping is now off" in unmapped["status_message"]
