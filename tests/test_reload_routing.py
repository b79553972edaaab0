"""Routing and plugins through a running daemon: reloads with new, changed and broken rule
modules, execution system plugins from a folder and from an entry point, the Mobyle2 simulator's
three routes, and rules that raise or hang."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import plugin_pkg
from tests.conftest import ROOT, Engine

pytestmark = pytest.mark.slow

PREFIX_RULE = """\
    from execution_engine import routing_rule

    @routing_rule("name_starts")
    def name_starts(job, prefix):
        return job.get("name", "").startswith(prefix)
    """

TWO_SYSTEMS = """\
    [plugins]
    routing_rules = {rules}
    [systems]
        [[a]]
        class = local
        slots = 4
        kill_grace = 1
        [[b]]
        class = local
        slots = 4
        kill_grace = 1
    [routes]
{routes}
        [[default]]
        system = a
    """

SPECIAL_ROUTE = """\
        [[special]]
        system = b
        rules = name_starts
            [[[name_starts]]]
            prefix = special
"""


def write_config(engine: Engine, rules: Path, routes: str = "") -> None:
    """Replace the plugin/system/route part of the engine's configuration."""
    text = engine.config_path.read_text()
    head = text[:text.index("[plugins]")] if "[plugins]" in text else text
    engine.config_path.write_text(head + textwrap.dedent(TWO_SYSTEMS).format(
        rules=rules, routes=textwrap.indent(textwrap.dedent(routes), "    ")))


def state_of(engine: Engine, job_id: Any) -> str | None:
    doc = engine.store.get(job_id)
    return doc.get("state") if doc else None


def doc_of(engine: Engine, job_id: Any) -> dict[str, Any]:
    doc = engine.store.get(job_id)
    assert doc is not None, job_id
    return doc


def reload_result(engine: Engine) -> dict[str, Any]:
    path = engine.state_dir / "run" / "reload.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def two_systems(engine_factory: Callable[..., Engine], tmp_path: Path
                ) -> tuple[Engine, Path]:
    rules = tmp_path / "rules"
    rules.mkdir()
    engine = engine_factory("", start=False)
    write_config(engine, rules)
    engine.start()
    return engine, rules


# ---------------------------------------------------------------------- reload
def test_reload_brings_a_new_rule_module_for_new_jobs_and_running_jobs_go_on(
        two_systems: tuple[Engine, Path], tmp_path: Path) -> None:
    engine, rules = two_systems
    release = tmp_path / "release"
    running = engine.submit("sh", "-c", f"while [ ! -e {release} ]; do sleep 0.05; done; "
                                        "echo done", name="special-before", notify=False)
    engine.wait_for(lambda: state_of(engine, running) == "running", what="the first job")
    before = doc_of(engine, running)
    assert before["system"] == "a"

    (rules / "prefix.py").write_text(textwrap.dedent(PREFIX_RULE))
    write_config(engine, rules, SPECIAL_ROUTE)
    out = engine.cli("reload")
    assert "reloaded" in out.stdout

    special = engine.submit("true", name="special-1", notify=False)
    ordinary = engine.submit("true", name="ordinary", notify=False)
    special_doc, ordinary_doc = engine.wait_ended([special, ordinary])
    assert (special_doc["route"], special_doc["system"]) == ("special", "b")
    assert (ordinary_doc["route"], ordinary_doc["system"]) == ("default", "a")
    route = engine.cli("route", str(special)).stdout
    assert "* route special -> b: TAKEN" in route
    assert "passed   name_starts(prefix='special')" in route

    # The module changes (same size, same mtime: no stale bytecode may be used).
    module = rules / "prefix.py"
    stat = module.stat()
    module.write_text(module.read_text().replace(".startswith(prefix)", ".endswith(prefix)  "))
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    engine.cli("reload")
    late = engine.submit("true", name="late-special", notify=False)
    old_style = engine.submit("true", name="special-2", notify=False)
    late_doc, old_style_doc = engine.wait_ended([late, old_style])
    assert late_doc["system"] == "b"
    assert old_style_doc["system"] == "a"

    # The job that was running through both reloads was never touched.
    still = doc_of(engine, running)
    assert still["state"] == "running"
    assert still["native_id"] == before["native_id"]
    assert [h["state"] for h in still["history"]] == [h["state"] for h in before["history"]]
    release.touch()
    (done,) = engine.wait_ended([running])
    assert done["state"] == "finished", done.get("status_message")
    assert Path(done["job_dir"], "job.stdout").read_text() == "done\n"


def test_a_broken_reload_fails_loudly_and_routing_keeps_the_previous_set(
        two_systems: tuple[Engine, Path]) -> None:
    engine, rules = two_systems
    (rules / "prefix.py").write_text(textwrap.dedent(PREFIX_RULE))
    write_config(engine, rules, SPECIAL_ROUTE)
    engine.cli("reload")

    # A module that does not import.
    broken = rules / "broken.py"
    broken.write_text("def oops(:\n    pass\n")
    failed = engine.cli("reload", check=False)
    assert failed.returncode != 0
    assert str(broken) in failed.stderr
    assert "SyntaxError" in failed.stderr
    job = engine.submit("true", name="special-after-broken", notify=False)
    (doc,) = engine.wait_ended([job])
    assert (doc["state"], doc["system"]) == ("finished", "b")

    # A Submit actor that restarts now (a crash) keeps the working set, and says so.
    (actor,) = engine.actor_pids("submit-actor")["submit-actor"]
    os.kill(actor, signal.SIGKILL)
    engine.wait_for(lambda: (pids := engine.actor_pids("submit-actor").get("submit-actor"))
                    and actor not in pids, what="a new submit actor")
    job = engine.submit("true", name="special-after-crash", notify=False)
    (doc,) = engine.wait_ended([job])
    assert (doc["state"], doc["system"]) == ("finished", "b")
    assert "using the last plugin set that loaded in this daemon" in \
        engine.log_file.read_text()

    # The daemon's own check (a SIGHUP not sent by `execd reload`) refuses it too, and logs it.
    pid = json.loads((engine.state_dir / "run" / "status.json").read_text())["pid"]
    since = time.time()
    os.kill(pid, signal.SIGHUP)
    result = engine.wait_for(lambda: (r := reload_result(engine)).get("at", 0) >= since and r,
                             what="the daemon's reload result")
    assert result["ok"] is False
    assert str(broken) in result["error"]
    engine.wait_for(lambda: "reload refused" in engine.log_file.read_text()
                    and str(broken) in engine.log_file.read_text(), what="the log")
    broken.unlink()

    # A route naming an unknown rule, a rule with bad or missing parameters.
    for routes, words in [
        (SPECIAL_ROUTE.replace("rules = name_starts", "rules = name_starts, no_such_rule"),
         "[routes][special] rules: unknown rule 'no_such_rule'"),
        (SPECIAL_ROUTE.replace("prefix = special", "prefx = special"),
         "[routes][special] rule name_starts: parameter prefix: missing"),
        (SPECIAL_ROUTE.replace("rules = name_starts", "rules = name_starts, name_matches\n"
                               "            [[[name_matches]]]\n            pattern = '(x'"),
         "[routes][special] rule name_matches: parameter pattern: invalid regular expression"),
    ]:
        write_config(engine, rules, routes)
        failed = engine.cli("reload", check=False)
        assert failed.returncode != 0
        assert words in failed.stderr, failed.stderr

    job = engine.submit("true", name="special-still", notify=False)
    (doc,) = engine.wait_ended([job])
    assert (doc["state"], doc["route"], doc["system"]) == ("finished", "special", "b")


# ---------------------------------------------------------------------- system plugins
def test_system_plugins_from_a_folder_and_from_an_entry_point_receive_jobs(
        engine_factory: Callable[..., Engine], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    site = plugin_pkg.lay_out(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT)]))
    engine = engine_factory(f"""\
        [plugins]
        systems = {ROOT / 'systems'}
        [systems]
            [[background]]
            class = local_nice
            niceness = 7
            slots = 2
            [[packaged]]
            class = pkg_local
            slots = 2
        [routes]
            [[alice]]
            system = packaged
            rules = pkg_owner_is
                [[[pkg_owner_is]]]
                owner = alice
            [[default]]
            system = background
        """)
    systems = engine.cli("systems").stdout
    assert f"folder {ROOT / 'systems' / 'example_system.py'}" in systems
    assert "entry point test_plugin (execd_test_plugin, execd-test-plugin 0.1.0)" in systems
    base = os.getpriority(os.PRIO_PROCESS, 0)
    by_alice = engine.submit("nice", owner="alice", notify=False)
    by_bob = engine.submit("nice", owner="bob", notify=False)
    alice_doc, bob_doc = engine.wait_ended([by_alice, by_bob])
    assert (alice_doc["state"], alice_doc["system"]) == ("finished", "packaged")
    assert (bob_doc["state"], bob_doc["system"]) == ("finished", "background")
    # pkg_local leaves a marker in the job's engine directory: it really ran the job.
    assert Path(alice_doc["job_dir"], ".execd", "pkg_local").read_text() == "packaged\n"
    assert Path(alice_doc["job_dir"], "job.stdout").read_text() == f"{base}\n"
    assert Path(bob_doc["job_dir"], "job.stdout").read_text() == f"{min(base + 7, 19)}\n"


# ---------------------------------------------------------------------- Mobyle2's simulator
USERS = {name: f"{name.lower()}@pieds-nickeles.fr"
         for name in ("Filochard", "Ribouldingue", "Croquignol")}


def test_mobyle_simulator_routes(engine_factory: Callable[..., Engine]) -> None:
    engine = engine_factory((ROOT / "conf" / "mobyle-sim.ini").read_text())
    cases = [
        # (job name, owner, project) -> (route, system)
        ("Filochard", "Filochard", "organisateurs-de-voyage", "route_1", "big_one"),
        ("Ribouldingue", "Ribouldingue", "dans-le-cambouis", "route_2", "small_one"),
        ("Croquignol", "Croquignol", "operation-congelation", "default", "cluster_two"),
        ("Filochard", "Filochard", "dans-le-cambouis", "route_1", "big_one"),  # first wins
        ("blast", "Filochard", "dans-le-cambouis", "route_2", "small_one"),    # ALL: name fails
        ("Filochard-2", "Croquignol", "organisateurs-de-voyage", "default", "cluster_two"),
        ("clustalw", "Ribouldingue", "l-operation", "default", "cluster_two"),
    ]
    ids = [engine.submit("true", name=name, owner=USERS[user], project=project, notify=False)
           for name, user, project, _route, _system in cases]
    docs = engine.wait_ended(ids)
    for doc, (name, user, project, route, system) in zip(docs, cases, strict=True):
        assert doc["state"] == "finished", doc.get("status_message")
        assert (doc["route"], doc["system"]) == (route, system), (name, user, project)
    why = engine.cli("route", str(ids[4])).stdout  # "blast" by Filochard in dans-le-cambouis
    assert "- route route_1 -> big_one: refused" in why
    assert "refused  name_matches(pattern='^Filochard')" in why
    assert "* route route_2 -> small_one: TAKEN" in why
    assert "route default -> cluster_two: not tried" in why


# ---------------------------------------------------------------------- failing rules
BAD_RULES = """\
    import time
    from execution_engine import routing_rule

    @routing_rule
    def boom(job):
        raise RuntimeError("kaput")

    @routing_rule
    def stuck(job):
        time.sleep(3600)
        return True
    """


def engine_with_bad_rules(engine_factory: Callable[..., Engine], tmp_path: Path) -> Engine:
    """A daemon whose routes ``explode`` and ``hang`` (for jobs named so) use BAD_RULES."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.py").write_text(textwrap.dedent(BAD_RULES))
    return engine_factory(f"""\
        [plugins]
        routing_rules = {rules}
        rule_timeout = 1
        [systems]
            [[local]]
            class = local
            slots = 4
        [routes]
            [[explode]]
            system = local
            rules = field_equals, boom
                [[[field_equals]]]
                field = name
                value = boom
            [[hang]]
            system = local
            rules = field_equals, stuck
                [[[field_equals]]]
                field = name
                value = hang
            [[default]]
            system = local
        """)


def test_raising_and_hanging_rules_end_their_job_in_error_and_others_go_on(
        engine_factory: Callable[..., Engine], tmp_path: Path) -> None:
    engine = engine_with_bad_rules(engine_factory, tmp_path)
    boom = engine.submit("true", name="boom", notify=False)
    fine = engine.submit("true", name="fine", notify=False)
    boom_doc, fine_doc = engine.wait_ended([boom, fine])
    assert boom_doc["state"] == "error"
    assert "rule boom of route explode failed: raised RuntimeError('kaput')" in \
        boom_doc["status_message"]
    assert fine_doc["state"] == "finished"

    (first_actor,) = engine.actor_pids("submit-actor")["submit-actor"]
    hung = [engine.submit("true", name="hang", notify=False) for _ in range(3)]
    after = engine.submit("true", name="after", notify=False)
    docs = engine.wait_ended([*hung, after], timeout=90)
    for doc in docs[:3]:
        assert doc["state"] == "error"
        assert "rule stuck of route hang did not answer within 1s" in doc["status_message"]
    assert docs[3]["state"] == "finished"
    # Three abandoned threads: the Submit actor restarts itself to free them.
    engine.wait_for(lambda: (pids := engine.actor_pids("submit-actor").get("submit-actor"))
                    and first_actor not in pids, what="a new submit actor")
    assert "routing rule threads are hung; restarting this actor" in \
        engine.log_file.read_text()
    last = engine.submit("true", name="last", notify=False)
    (last_doc,) = engine.wait_ended([last])
    assert last_doc["state"] == "finished"


def test_hanging_rules_while_application_jobs_are_built_restart_the_building_actor(
        engine_factory: Callable[..., Engine], tmp_path: Path) -> None:
    # Application jobs are routed while they are built: the Building actor runs the rules.
    engine = engine_with_bad_rules(engine_factory, tmp_path)
    engine.cli("app", "add", str(ROOT / "tests" / "apps" / "square"))

    def square(name: str) -> Any:
        return engine.insert({"state": "to be built", "app": {"name": "square"}, "name": name,
                              "inputs": [{"name": "n", "value": 3}], "notify": False})

    (first_actor,) = engine.actor_pids("building-actor")["building-actor"]
    hung = [square("hang") for _ in range(3)]
    docs = engine.wait_ended(hung, timeout=90)
    for doc in docs:
        assert doc["state"] == "error"
        assert "rule stuck of route hang did not answer within 1s" in doc["status_message"]
    engine.wait_for(lambda: (pids := engine.actor_pids("building-actor").get("building-actor"))
                    and first_actor not in pids, what="a new building actor")
    assert "routing rule threads are hung; restarting this actor" in \
        engine.log_file.read_text()
    (last,) = engine.wait_ended([square("last")])
    assert last["state"] == "finished", last.get("status_message")
