"""Identity: owners mapped to local accounts by each mode, every refusal, pool leases on a real
mongod (idle reuse, exhaustion, races between resolvers), the hook through a real pluggy
manager, and the ``[identity]`` configuration.

The accounts are real: made with ``useradd`` by the ``local_accounts`` fixture (root only;
skipped otherwise, failed under ``CI=true``).
"""

from __future__ import annotations

import pickle
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pluggy
import pytest
from configobj import ConfigObj
from pymongo import MongoClient
from pymongo.collection import Collection

from execution_engine import hookspecs
from execution_engine.config import EngineConfig, load_config, parse_config
from execution_engine.errors import ConfigError
from execution_engine.hookspecs import hookimpl
from execution_engine.identity import (
    Account,
    AccountResolver,
    IdentitySection,
    OwnerRefused,
    parse_identity_section,
    resolver_from_config,
)
from tests.support.accounts import LocalAccounts

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- fixtures
@dataclass(frozen=True)
class People:
    """The accounts of these tests (real names)."""

    group: str          # execdt_s<pid>_grp
    in_group: Account   # a regular account, a supplementary member of ``group``
    plain: Account      # a regular account in no extra group
    system: Account     # useradd --system: a uid below 1000
    root_group: Account  # a regular uid whose primary group is root (gid 0)
    pool: tuple[Account, ...]  # three regular accounts for the pool tests
    prefix: str         # the session's name prefix, for patterns


@pytest.fixture(scope="module")
def people(local_accounts: LocalAccounts) -> People:
    group = local_accounts.group("grp")
    root_group = local_accounts.account("rootgid")
    subprocess.run(["usermod", "-g", "root", root_group.name], check=True)
    return People(
        group=group,
        in_group=local_accounts.account("a1", groups=[group]),
        plain=local_accounts.account("a2"),
        system=local_accounts.account("sys1", system=True),
        root_group=Account.lookup(root_group.name),
        pool=tuple(local_accounts.account(f"p{i}") for i in range(1, 4)),
        prefix=local_accounts.name(""),
    )


@pytest.fixture
def leases(mongo_uri: str, database: str) -> Iterator[Collection[Any]]:
    client: MongoClient[Any] = MongoClient(mongo_uri)
    yield client[database]["leases"]
    client.close()


def section(**values: Any) -> IdentitySection:
    return parse_identity_section(values, Path("/"))


def make(values: Mapping[str, Any], **kwargs: Any) -> AccountResolver:
    resolver = resolver_from_config(section(**values), **kwargs)
    assert resolver is not None
    return resolver


def map_resolver(tmp_path: Path, lines: str, **values: Any) -> AccountResolver:
    path = tmp_path / "owners"
    path.write_text(lines)
    return make({"mapping": "map", "map_file": str(path), **values})


def refusal(resolver: AccountResolver, job: Mapping[str, Any]) -> OwnerRefused:
    with pytest.raises(OwnerRefused) as info:
        resolver.account_for(job)
    return info.value


# ---------------------------------------------------------------------- accounts
def test_account_lookup_reads_the_system_databases(people: People) -> None:
    account = Account.lookup(people.in_group.name)
    assert account == people.in_group
    assert account.uid >= 1000
    assert account.gid in account.groups
    assert subprocess.run(["getent", "group", people.group], capture_output=True, text=True,
                          check=True).stdout.split(":")[2] in {str(g) for g in account.groups}
    assert account.environment() == {"HOME": account.home, "USER": account.name,
                                     "LOGNAME": account.name, "SHELL": "/bin/sh"}
    assert Path(account.home).is_dir()


@pytest.mark.parametrize("name", ["execdt_nosuchaccount", "bad\0name", ""])
def test_lookup_of_no_account_raises_key_error(name: str) -> None:
    with pytest.raises(KeyError):
        Account.lookup(name)


def test_mapping_off_makes_no_resolver(tmp_path: Path) -> None:
    assert not section().enabled
    assert resolver_from_config(section()) is None
    (tmp_path / "owners").write_text("alice@x root\n")
    assert section(mapping="map", map_file=str(tmp_path / "owners")).enabled


# ---------------------------------------------------------------------- map
def test_map_file_maps_owners(tmp_path: Path, people: People) -> None:
    resolver = map_resolver(tmp_path, f"# owners of this site\n\n"
                                      f"alice@example.org  {people.in_group.name}  # Alice\n"
                                      f"   bob@example.org\t{people.plain.name}\n")
    assert resolver.account_for({"owner": "alice@example.org"}) == people.in_group
    assert resolver.account_for({"owner": "bob@example.org"}) == people.plain
    assert resolver.describe() == f"map file {tmp_path / 'owners'}"
    refused = refusal(resolver, {"owner": "eve@example.org"})
    assert str(refused) == (f"owner 'eve@example.org' maps to no account: not in map file "
                            f"{tmp_path / 'owners'}")
    assert (refused.owner, refused.mapping, refused.account) == (
        "eve@example.org", f"map file {tmp_path / 'owners'}", None)


def test_map_file_is_read_when_the_resolver_is_made(tmp_path: Path, people: People) -> None:
    resolver = map_resolver(tmp_path, f"alice {people.in_group.name}\n")
    (tmp_path / "owners").write_text(f"alice {people.plain.name}\n")
    assert resolver.account_for({"owner": "alice"}) == people.in_group  # this resolver: as read
    new = make({"mapping": "map", "map_file": str(tmp_path / "owners")})
    assert new.account_for({"owner": "alice"}) == people.plain  # a reload: the new file


@pytest.mark.parametrize(("text", "line", "what"), [
    ("a x\n# fine\nb y z\n", 3, "expected 'owner account', got 'b y z'"),
    ("\n\nlonely\n", 3, "expected 'owner account'"),
    ("a x\nb y\na z\n", 3, "owner 'a' is already mapped on line 1"),
])
def test_malformed_map_file_names_file_and_line(tmp_path: Path, text: str, line: int, what: str
                                                ) -> None:
    path = tmp_path / "owners"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        resolver_from_config(section(mapping="map", map_file=str(path)))
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert what in str(info.value)


def test_unreadable_map_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "owners"
    path.write_bytes(b"a \xff\xfe\n")
    with pytest.raises(ValueError, match=r"\[identity\] map_file: cannot read"):
        resolver_from_config(section(mapping="map", map_file=str(path)))


# ---------------------------------------------------------------------- pattern
def test_pattern_maps_owners_by_their_named_groups(people: People) -> None:
    resolver = make({"mapping": "pattern", "pattern": r"(?P<user>[a-z0-9]+)@example\.org",
                     "account": people.prefix + "{user}"})
    assert resolver.account_for({"owner": "a1@example.org"}) == people.in_group
    assert resolver.account_for({"owner": "a2@example.org"}) == people.plain
    # fullmatch: a prefix or a suffix is no match.
    for owner in ("a1@example.org.evil.net", "x.a1@example.org", "a1@example_org"):
        refused = refusal(resolver, {"owner": owner})
        assert str(refused).startswith(f"owner {owner!r} maps to no account: it does not match "
                                       f"pattern ")


def test_pattern_refuses_what_is_not_an_account_name(people: People) -> None:
    resolver = make({"mapping": "pattern", "pattern": r"(?P<user>.+)@x\.org",
                     "account": "{user}"})
    for owner in ("../etc@x.org", "-rf@x.org", "Root@x.org", "a b@x.org"):
        refused = refusal(resolver, {"owner": owner})
        assert "which is not an account name" in str(refused), owner


def test_pattern_with_an_optional_group_that_matched_nothing(people: People) -> None:
    resolver = make({"mapping": "pattern", "pattern": r"(?:(?P<user>[a-z]+)@)?x\.org",
                     "account": "{user}"})
    assert "group user of pattern" in str(refusal(resolver, {"owner": "x.org"}))


def test_pattern_to_one_fixed_account(people: People) -> None:
    resolver = make({"mapping": "pattern", "pattern": r".+@partner\.org",
                     "account": people.plain.name})
    assert resolver.account_for({"owner": "anyone@partner.org"}) == people.plain


# ---------------------------------------------------------------------- vetting
def test_root_is_refused_whatever_the_floor(tmp_path: Path, people: People) -> None:
    resolver = map_resolver(tmp_path, "eve@x.org root\n", min_uid=1)
    refused = refusal(resolver, {"owner": "eve@x.org"})
    assert str(refused) == (f"owner 'eve@x.org' maps to account 'root' by map file "
                            f"{tmp_path / 'owners'}: it has uid 0 (root), which is never allowed")
    assert refused.account == "root"


def test_system_account_is_below_the_uid_floor(tmp_path: Path, people: People) -> None:
    assert people.system.uid < 1000
    resolver = map_resolver(tmp_path, f"svc@x.org {people.system.name}\n")
    assert str(refusal(resolver, {"owner": "svc@x.org"})).endswith(
        f"its uid {people.system.uid} is below the uid floor 1000 ([identity] min_uid)")
    # A site that lowers the floor accepts it.
    low = map_resolver(tmp_path, f"svc@x.org {people.system.name}\n", min_uid=100)
    assert low.account_for({"owner": "svc@x.org"}) == people.system


def test_uid_floor_is_the_configured_one(tmp_path: Path, people: People) -> None:
    floor = people.plain.uid + 1
    resolver = map_resolver(tmp_path, f"bob {people.plain.name}\n", min_uid=floor)
    assert f"below the uid floor {floor}" in str(refusal(resolver, {"owner": "bob"}))


def test_root_primary_group_is_refused(tmp_path: Path, people: People) -> None:
    assert people.root_group.gid == 0 and people.root_group.uid >= 1000
    resolver = map_resolver(tmp_path, f"mallory {people.root_group.name}\n")
    assert "its primary group is gid 0 (root)" in str(refusal(resolver, {"owner": "mallory"}))


def test_allowed_groups(tmp_path: Path, people: People) -> None:
    lines = f"alice {people.in_group.name}\nbob {people.plain.name}\n"
    resolver = map_resolver(tmp_path, lines, groups=[people.group])
    assert resolver.account_for({"owner": "alice"}) == people.in_group  # a supplementary member
    refused = refusal(resolver, {"owner": "bob"})
    assert str(refused).endswith(f"it is in none of the groups {people.group} "
                                 f"([identity] groups)")
    # The primary group counts too.
    primary = map_resolver(tmp_path, lines, groups=[people.plain.name])
    assert primary.account_for({"owner": "bob"}) == people.plain


def test_unknown_account_is_refused(tmp_path: Path, people: People) -> None:
    resolver = map_resolver(tmp_path, "ghost execdt_no_such_user\n")
    assert str(refusal(resolver, {"owner": "ghost"})).endswith(": no such local account")


@pytest.mark.parametrize("owner", [None, 42, "", b"alice", ["alice"]])
def test_owner_must_be_a_non_empty_string(tmp_path: Path, people: People, owner: Any) -> None:
    resolver = map_resolver(tmp_path, f"alice {people.plain.name}\n")
    refused = refusal(resolver, {"owner": owner})
    assert str(refused).startswith(f"owner {owner!r} maps to no account: the job's owner must "
                                   f"be a non-empty string")
    assert refused.owner == (owner if isinstance(owner, str) else repr(owner))
    assert "must be a non-empty string" in str(refusal(resolver, {}))


# ---------------------------------------------------------------------- pool
def pool_resolver(people: People, leases: Collection[Any], **values: Any) -> AccountResolver:
    pools = {"bio": [a.name for a in people.pool[:2]], "chem": [people.pool[2].name]}
    return make({"mapping": "pool", "pools": pools, **values}, leases=leases)


def test_pool_leases_one_account_per_owner(people: People, leases: Collection[Any]) -> None:
    resolver = pool_resolver(people, leases)
    alice = resolver.account_for({"owner": "alice", "project": "bio"})
    first_use = leases.find_one({"_id": alice.name})
    assert first_use is not None and first_use["owner"] == "alice" and first_use["pool"] == "bio"
    time.sleep(0.01)
    assert resolver.account_for({"owner": "alice", "project": "bio"}) == alice  # the same
    renewed = leases.find_one({"_id": alice.name})
    assert renewed is not None
    assert renewed["used_at"] > first_use["used_at"]
    assert renewed["leased_at"] == first_use["leased_at"]
    bob = resolver.account_for({"owner": "bob", "project": "bio"})
    assert {alice, bob} == set(people.pool[:2])
    # A pool per project: alice in chem gets chem's account.
    assert resolver.account_for({"owner": "alice", "project": "chem"}) == people.pool[2]


def test_pool_exhausted(people: People, leases: Collection[Any]) -> None:
    resolver = pool_resolver(people, leases)
    resolver.account_for({"owner": "alice", "project": "chem"})
    refused = refusal(resolver, {"owner": "bob", "project": "chem"})
    assert "pool 'chem' is exhausted: its 1 accounts are all leased" in str(refused)
    assert refused.mapping in str(refused) or "[identity] pool_idle_s" in str(refused)


def test_idle_lease_goes_back_to_the_pool(people: People, leases: Collection[Any]) -> None:
    resolver = pool_resolver(people, leases, pool_idle_s=0.3)
    chem = people.pool[2]
    assert resolver.account_for({"owner": "alice", "project": "chem"}) == chem
    refusal(resolver, {"owner": "bob", "project": "chem"})  # in use
    time.sleep(0.4)
    assert resolver.account_for({"owner": "bob", "project": "chem"}) == chem
    lease = leases.find_one({"_id": chem.name})
    assert lease is not None and lease["owner"] == "bob"
    # alice's lease is gone: she waits like anyone else.
    assert "exhausted" in str(refusal(resolver, {"owner": "alice", "project": "chem"}))


def test_pool_by_group_and_jobs_naming_no_pool(people: People, leases: Collection[Any]) -> None:
    resolver = pool_resolver(people, leases, pool_key="group")
    assert resolver.account_for({"owner": "alice", "group": "chem", "project": "bio"}) \
        == people.pool[2]
    assert "the job has no group" in str(refusal(resolver, {"owner": "x", "project": "bio"}))
    refused = refusal(resolver, {"owner": "x", "group": "physics"})
    assert "group 'physics' names no pool" in str(refused)
    assert "(pools: bio, chem)" in str(refused)
    assert "the job has no group" in str(refusal(resolver, {"owner": "x", "group": 3}))


def test_pool_skips_accounts_jobs_may_not_run_as(people: People, leases: Collection[Any]
                                                 ) -> None:
    resolver = make({"mapping": "pool", "pools": {
        "bio": ["execdt_no_such_user", "root", people.system.name, people.pool[0].name]}},
        leases=leases)
    assert resolver.account_for({"owner": "alice", "project": "bio"}) == people.pool[0]
    assert leases.count_documents({}) == 1  # nothing lent that cannot serve


def test_removed_pool_account_is_released(people: People, leases: Collection[Any]) -> None:
    before = pool_resolver(people, leases)
    first = before.account_for({"owner": "alice", "project": "bio"})
    # A reload where the administrator took that account out of the pool.
    others = [a.name for a in people.pool[:2] if a != first]
    after = make({"mapping": "pool", "pools": {"bio": others}}, leases=leases)
    assert after.account_for({"owner": "alice", "project": "bio"}).name == others[0]


def race(resolvers: list[AccountResolver], jobs: list[dict[str, Any]]
         ) -> list[Account | OwnerRefused]:
    """Every job resolved at once, one thread each, alternating between ``resolvers``."""
    barrier = threading.Barrier(len(jobs))
    results: list[Account | OwnerRefused | None] = [None] * len(jobs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = resolvers[i % len(resolvers)].account_for(jobs[i])
        except OwnerRefused as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_racing_resolvers_never_lease_one_account_to_two_owners(
        people: People, mongo_uri: str, database: str) -> None:
    pool = [a.name for a in people.pool]
    clients: list[MongoClient[Any]] = [MongoClient(mongo_uri) for _ in range(2)]
    try:
        for round_ in range(5):
            collections = [c[database][f"leases{round_}"] for c in clients]
            resolvers = [make({"mapping": "pool", "pools": {"bio": pool},
                               "pool_idle_s": 3600}, leases=c) for c in collections]
            jobs = [{"owner": f"owner{i}", "project": "bio"} for i in range(8)]
            results = race(resolvers, jobs)
            granted = {job["owner"]: r.name for job, r in zip(jobs, results, strict=True)
                       if isinstance(r, Account)}
            assert sorted(granted.values()) == sorted(pool), results  # each lent once, all lent
            refused = [r for r in results if isinstance(r, OwnerRefused)]
            assert len(refused) == 5 and all("exhausted" in str(r) for r in refused)
            stored = {d["_id"]: d["owner"] for d in collections[0].find()}
            assert stored == {name: owner for owner, name in granted.items()}
    finally:
        for client in clients:
            client.close()


def test_racing_jobs_of_one_owner_share_its_account(people: People, leases: Collection[Any]
                                                    ) -> None:
    resolvers = [pool_resolver(people, leases) for _ in range(2)]
    results = race(resolvers, [{"owner": "alice", "project": "bio"}] * 6)
    assert len({r.name for r in results if isinstance(r, Account)}) == 1, results
    assert all(isinstance(r, Account) for r in results)
    assert leases.count_documents({"owner": "alice"}) == 1


def test_pool_mode_needs_the_leases_collection(people: People) -> None:
    with pytest.raises(ValueError, match="needs the collection of pool leases"):
        resolver_from_config(section(mapping="pool", pools={"bio": ["x"]}))


# ---------------------------------------------------------------------- hook
def hook_caller(*plugins: object) -> Any:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for plugin in plugins:
        manager.register(plugin)
    manager.check_pending()
    return manager.hook.execd_map_owner


class Directory:
    def __init__(self, table: Mapping[str, str | None]) -> None:
        self.table = table

    @hookimpl
    def execd_map_owner(self, owner: str, job: Mapping[str, Any]) -> str | None:
        return self.table.get(owner)


def test_hook_maps_owners_first_answer_wins(people: People) -> None:
    first = Directory({"alice": people.in_group.name})
    second = Directory({"alice": people.plain.name, "bob": people.plain.name})
    resolver = make({"mapping": "hook"}, hook=hook_caller(second, first))  # last registered
    assert resolver.account_for({"owner": "alice"}) == people.in_group    # is called first
    assert resolver.account_for({"owner": "bob"}) == people.plain
    refused = refusal(resolver, {"owner": "eve"})
    assert str(refused) == ("owner 'eve' maps to no account: the execd_map_owner hook mapped it "
                            "to nothing")


def test_hook_failures_refuse_the_owner(people: People) -> None:
    class Broken:
        @hookimpl
        def execd_map_owner(self, owner: str, job: Mapping[str, Any]) -> str | None:
            if owner == "writer":
                job["owner"] = "root"  # type: ignore[index]
            raise RuntimeError("directory down")

    resolver = make({"mapping": "hook"}, hook=hook_caller(Broken()))
    assert str(refusal(resolver, {"owner": "alice"})).endswith(
        "the execd_map_owner hook raised RuntimeError: directory down")
    # The job a plugin sees is read-only.
    job = {"owner": "writer"}
    assert "raised TypeError" in str(refusal(resolver, job))
    assert job == {"owner": "writer"}


def test_hook_answers_are_vetted(people: People) -> None:
    resolver = make({"mapping": "hook"}, hook=hook_caller(Directory({"eve": "root", "n": ""})))
    assert "uid 0 (root)" in str(refusal(resolver, {"owner": "eve"}))
    assert "answered '', not an account name" in str(refusal(resolver, {"owner": "n"}))


def test_hook_mode_needs_the_hook() -> None:
    with pytest.raises(ValueError, match="needs the execd_map_owner hook caller"):
        resolver_from_config(section(mapping="hook"))


# ---------------------------------------------------------------------- configuration
def test_identity_section_from_the_config_file(tmp_path: Path, people: People) -> None:
    (tmp_path / "owners").write_text("")
    path = tmp_path / "execd.ini"
    path.write_text(f"[identity]\nmapping = map\nmap_file = owners\nmin_uid = 2000\n"
                    f"groups = {people.group}\ngroup_access = {people.group}\n"
                    f"[[pools]]\nbio = p1, p2\nchem = c1\n")
    identity = load_config(path).identity
    assert identity == IdentitySection(
        mapping="map", map_file=tmp_path / "owners", pattern="", account="{user}",
        pools={"bio": ("p1", "p2"), "chem": ("c1",)}, pool_key="project", pool_idle_s=86400.0,
        min_uid=2000, groups=(people.group,), group_access=people.group)
    assert identity.enabled


def test_defaults_agree_with_the_configspec() -> None:
    config = parse_config("")
    assert config.identity == parse_identity_section({}, Path.cwd())
    assert not config.identity.enabled
    assert pickle.loads(pickle.dumps(config)) == config  # the actors receive it pickled
    # Every EngineConfig built without identity has it off.
    fields = {name: getattr(config, name) for name in EngineConfig.__dataclass_fields__}
    del fields["identity"]
    assert EngineConfig(**fields).identity == config.identity


@pytest.mark.parametrize(("text", "message"), [
    ("mapping = map", "[identity] map_file: empty, but mapping = map needs one"),
    ("mapping = map\nmap_file = /nonexistent/owners",
     "[identity] map_file: /nonexistent/owners is not a file"),
    ("mapping = pattern", "[identity] pattern: empty, but mapping = pattern needs one"),
    ("mapping = pattern\npattern = (?P<user>[a-z]+", "[identity] pattern: '(?P<user>[a-z]+' is "
                                                    "not a valid regular expression"),
    ("mapping = pattern\npattern = (?P<name>[a-z]+)@x",
     "[identity] account: '{user}' uses user, which [identity] pattern"),
    ("mapping = pattern\npattern = ([a-z]+)@x\naccount = {0}",
     "[identity] account: {0} in '{0}' is not the name of a group of the pattern"),
    ("mapping = pattern\npattern = (?P<user>.+)\naccount = {user.__class__}",
     "is not the name of a group of the pattern"),
    ("mapping = pattern\npattern = (?P<user>.+)\naccount = '{user'",
     "[identity] account: '{user' is not a valid template"),
    ("mapping = pool", "[identity] pools: empty, but mapping = pool needs at least one pool"),
    ("mapping = pool\n[[pools]]\nbio = ,", "[identity][pools] bio: a pool without accounts"),
    ("mapping = pool\n[[pools]]\nbio = a, b\nchem = b",
     "[identity][pools] chem: account 'b' is also in pool 'bio'"),
    ("min_uid = 0", '[identity] min_uid: the value "0" is too small'),
    ("pool_idle_s = 0", '[identity] pool_idle_s: the value "0.0" is too small'),
    ("mapping = ldap", '[identity] mapping: the value "ldap" is unacceptable'),
    ("pool_key = user", '[identity] pool_key: the value "user" is unacceptable'),
    ("groups = execdt_no_such_group", "[identity] groups: no group 'execdt_no_such_group'"),
    ("group_access = execdt_no_such_group",
     "[identity] group_access: no group 'execdt_no_such_group'"),
    ("colour = red", "[identity] colour: unknown key or section"),
    ("[[pools]]\n[[[nested]]]", "[identity][pools] nested: unknown key or section"),
])
def test_config_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[identity]\n{text}\n")
    assert message in str(info.value)


@pytest.mark.parametrize(("values", "message"), [
    ({"min_uid": 0}, "[identity] min_uid: 0 is below 1"),
    ({"min_uid": -5}, "[identity] min_uid: -5 is below 1"),
    ({"pool_idle_s": 0}, "[identity] pool_idle_s: 0.0 is not above 0"),
    ({"mapping": "ldap"}, "[identity] mapping: 'ldap' is not one of"),
    ({"pool_key": "user"}, "[identity] pool_key: 'user' is not one of"),
])
def test_parse_identity_section_checks_what_the_configspec_does(values: dict[str, Any],
                                                                message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_identity_section(values, Path("/"))
    assert str(info.value).startswith(message)


def test_example_config_documents_every_identity_key() -> None:
    example = ROOT / "conf" / "execd.ini"
    assert not load_config(example).identity.enabled
    spec = ConfigObj(resources.files("execution_engine").joinpath("configspec.ini")
                     .read_text().splitlines(), list_values=False, _inspec=True)
    text = example.read_text()
    identity = text[text.index("[identity]"):text.index("\n[", text.index("[identity]") + 1)]
    for key in spec["identity"]:
        if key == "pools":
            assert "# [[pools]]" in identity
        else:
            assert f"{key} =" in identity, f"[identity] {key} undocumented"
