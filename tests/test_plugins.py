"""The plugin registry: built-ins, drop-in folders (hook and decorators), entry points, fresh
module loading, and every way a plugin or its configuration can be refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from execution_engine import ExecutionSystem, execution_system, routing_rule
from execution_engine.config import EngineConfig, parse_config
from execution_engine.errors import ConfigError, PluginError
from execution_engine.plugins import (
    BUILTIN_SOURCE,
    LoaderRole,
    common_system_spec,
    create_systems,
    load_registry,
    marked_in,
    system_options,
)
from execution_engine.routing.context import CAPABILITY_KEYS
from execution_engine.systems.local import LocalSystem
from tests import plugin_pkg
from tests.conftest import ROOT

HOOK_RULES = """\
    from execution_engine import hookimpl

    def is_big(job, threshold="10"):
        return len(job.get("command", ())) > int(threshold)

    @hookimpl
    def execd_routing_rules():
        return {"is_big": is_big}
    """

DECORATED = """\
    from typing import ClassVar
    from execution_engine import routing_rule, execution_system
    from execution_engine.systems.local import LocalSystem

    @routing_rule("owner_is_alice")
    def alice(job):
        return job.get("owner") == "alice"

    @routing_rule
    def always(job):
        return True

    @execution_system
    class Fancy(LocalSystem):
        kind: ClassVar[str] = "fancy"
        option_spec = {**LocalSystem.option_spec, "colour": 'string(default="blue")'}

    @execution_system("shiny")
    class Shiny(Fancy):
        pass

    class NotMarked(Fancy):  # inherits Fancy's mark: must not be registered
        kind: ClassVar[str] = "not_marked"
    """


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def make_config(tmp_path: Path, body: str = "", *, rules: Path | None = None,
                systems: Path | None = None) -> EngineConfig:
    plugins = "[plugins]\n"
    if rules is not None:
        plugins += f"routing_rules = {rules}\n"
    if systems is not None:
        plugins += f"systems = {systems}\n"
    text = (f"[engine]\nstate_dir = {tmp_path / 'state'}\n" + plugins
            + textwrap.dedent(body))
    return parse_config(text, None)


# ---------------------------------------------------------------------- sources
def test_builtins_are_plugins_with_their_source(tmp_path: Path) -> None:
    registry = load_registry(make_config(tmp_path))
    assert registry.systems["local"] is LocalSystem
    for name in ("owner_in", "owner_is_local", "project_in", "name_matches", "field_equals",
                 "matches_requirements"):
        assert registry.sources[f"rule:{name}"] == BUILTIN_SOURCE
    assert registry.sources["system:local"] == BUILTIN_SOURCE


def test_folder_modules_register_by_hook_and_by_decorator(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    hook_file = write(rules, "hooked.py", HOOK_RULES)
    deco_file = write(tmp_path / "systems", "decorated.py", DECORATED)
    write(rules, "_private_helper.py", "raise RuntimeError('never imported')\n")
    registry = load_registry(make_config(tmp_path, rules=rules, systems=tmp_path / "systems"))
    assert registry.sources["rule:is_big"] == f"folder {hook_file}"
    assert registry.sources["rule:owner_is_alice"] == f"folder {deco_file}"
    assert registry.sources["rule:always"] == f"folder {deco_file}"
    assert registry.sources["system:fancy"] == f"folder {deco_file}"
    assert registry.systems["shiny"].__name__ == "Shiny"
    assert "not_marked" not in registry.systems
    assert registry.rules["owner_is_alice"]({"owner": "alice"}) is True


def test_marked_in_ignores_what_a_module_imports(tmp_path: Path) -> None:
    import types

    module = types.ModuleType("plugin_x")

    @routing_rule("imported")
    def imported(job: object) -> bool:
        return True

    @execution_system("imported_system")
    class Imported(LocalSystem):
        pass

    module.imported = imported  # type: ignore[attr-defined]
    module.Imported = Imported  # type: ignore[attr-defined]
    assert marked_in(module) == ({}, [])


def test_one_folder_for_both_kinds_is_loaded_once(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    write(folder, "decorated.py", DECORATED)
    registry = load_registry(make_config(tmp_path, rules=folder, systems=folder))
    assert "fancy" in registry.systems


def test_a_module_providing_nothing_is_noted(tmp_path: Path) -> None:
    empty = write(tmp_path / "rules", "empty.py", "X = 1\n")
    registry = load_registry(make_config(tmp_path, rules=tmp_path / "rules"))
    assert registry.notes == [f"{empty} provides no rule and no execution system"]


def test_the_repository_example_plugins_load(tmp_path: Path) -> None:
    registry = load_registry(make_config(
        tmp_path, rules=ROOT / "routing_rules", systems=ROOT / "systems", body="""\
        [systems]
            [[nice]]
            class = local_nice
            niceness = 5
        [routes]
            [[r]]
            system = nice
            rules = owner_domain_in, wants_cores, has_metadata
                [[[owner_domain_in]]]
                domains = example.org
                [[[wants_cores]]]
                at_least = 2
                [[[has_metadata]]]
                key = tier
        """))
    for name in ("owner_domain_in", "wants_cores", "has_metadata"):
        assert registry.sources[f"rule:{name}"] == \
            f"folder {ROOT / 'routing_rules' / 'example_rules.py'}"
    assert registry.sources["system:local_nice"] == \
        f"folder {ROOT / 'systems' / 'example_system.py'}"
    with pytest.raises(ConfigError, match=r"\[routes\]\[r\] rule wants_cores: parameter "
                                          r"at_least: 0 is smaller than 1"):
        load_registry(make_config(tmp_path, rules=ROOT / "routing_rules", body="""\
            [routes]
                [[r]]
                system = local
                rules = wants_cores
                    [[[wants_cores]]]
                    at_least = 0
            """))


# ---------------------------------------------------------------------- freshness
def test_a_changed_module_is_loaded_anew_even_within_the_same_second(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    path = write(folder, "answer.py", """\
        from execution_engine import routing_rule

        @routing_rule("answer")
        def answer(job):
            return "AAAA"
        """)
    config = make_config(tmp_path, rules=folder)
    assert load_registry(config).rules["answer"]({}) == "AAAA"
    stat = path.stat()
    path.write_text(path.read_text().replace("AAAA", "BBBB"))  # same size...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))    # ...and the same mtime
    assert load_registry(config).rules["answer"]({}) == "BBBB"
    assert not (folder / "__pycache__").exists()


def test_a_module_removed_from_the_folder_is_gone_at_the_next_load(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    path = write(folder, "hooked.py", HOOK_RULES)
    config = make_config(tmp_path, rules=folder)
    assert "is_big" in load_registry(config).rules
    path.unlink()
    assert "is_big" not in load_registry(config).rules


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("text", "words"), [
    ("def broken(:\n", "fails to import: SyntaxError"),
    ("raise RuntimeError('no database')\n", "fails to import: RuntimeError('no database')"),
    ("import sys\nsys.exit(3)\n", "fails to import: SystemExit(3)"),
    ("import no_such_module_for_execd\n", "No module named 'no_such_module_for_execd'"),
    ("from execution_engine import hookimpl\n@hookimpl\ndef execd_routing_rule():\n    return {}\n",
     "unknown hook 'execd_routing_rule'"),
    ("from execution_engine import hookimpl\n@hookimpl\ndef execd_routing_rules(job):\n"
     "    return {}\n", "cannot be registered"),
    ("from execution_engine import hookimpl\n@hookimpl\ndef execd_routing_rules():\n"
     "    return {'owner_in': lambda job: True}\n", "rule 'owner_in' is already provided by "
                                                   "built-in"),
    ("from execution_engine import hookimpl\n@hookimpl\ndef execd_routing_rules():\n"
     "    return {'x': 42}\n", "rule 'x' is not callable"),
    ("from execution_engine import hookimpl\n@hookimpl\ndef execd_routing_rules():\n"
     "    raise OSError('disk')\n", "execd_routing_rules failed: OSError('disk')"),
    ("from execution_engine import hookimpl\n@hookimpl\ndef execd_execution_systems():\n"
     "    return [dict]\n", "is not an ExecutionSystem with a kind"),
    ("from typing import ClassVar\nfrom execution_engine import execution_system\n"
     "from execution_engine.systems.local import LocalSystem\n@execution_system\n"
     "class Bad(LocalSystem):\n    kind: ClassVar[str] = 'bad'\n"
     "    option_spec = {**LocalSystem.option_spec, 'queues': 'string()'}\n",
     "redefines the options every system shares: queues"),
])
def test_a_broken_plugin_is_refused_naming_its_file(tmp_path: Path, text: str,
                                                     words: str) -> None:
    path = write(tmp_path / "rules", "bad_plugin.py", text)
    with pytest.raises(PluginError) as caught:
        load_registry(make_config(tmp_path, rules=tmp_path / "rules"))
    assert str(path) in str(caught.value)
    assert words in str(caught.value)


def test_a_module_that_fails_to_import_leaves_nothing_in_sys_modules(tmp_path: Path) -> None:
    write(tmp_path / "rules", "half.py", "X = 1\nraise RuntimeError('half way')\n")
    with pytest.raises(PluginError, match="half way"):
        load_registry(make_config(tmp_path, rules=tmp_path / "rules"))
    assert not [name for name in sys.modules if name.endswith("_half")]


def test_two_modules_claiming_one_rule_name_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "rules", "a.py", HOOK_RULES)
    write(tmp_path / "rules", "b.py", HOOK_RULES)
    with pytest.raises(PluginError, match=r"b\.py: rule 'is_big' is already provided by "
                                          r"folder .*a\.py"):
        load_registry(make_config(tmp_path, rules=tmp_path / "rules"))


def test_a_missing_plugin_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="plugin folder does not exist"):
        load_registry(make_config(tmp_path, rules=tmp_path / "nowhere"))


@pytest.mark.parametrize(("body", "words"), [
    ("[routes]\n[[r]]\nsystem = local\nrules = nope\n",
     "[routes][r] rules: unknown rule 'nope'"),
    ("[routes]\n[[r]]\nsystem = local\nrules = is_big\n[[[is_big]]]\nthreshold = 1\nsize = 2\n",
     "[routes][r] rule is_big: parameter size: unknown (the rule takes: threshold)"),
    ("[routes]\n[[r]]\nsystem = local\nrules = name_matches\n[[[name_matches]]]\npattern = '*'\n",
     "[routes][r] rule name_matches: parameter pattern: invalid regular expression '*'"),
    ("[systems]\n[[s]]\nclass = nope\n", "[systems][s] class: unknown execution system class"),
    ("[systems]\n[[s]]\nclass = local\nslotz = 3\n",
     "[systems][s] slotz: unknown option for class 'local'"),
    ("[systems]\n[[s]]\nclass = local\nmax_cores = 0\n", "[systems][s] max_cores"),
])
def test_config_problems_against_the_loaded_plugins(tmp_path: Path, body: str,
                                                    words: str) -> None:
    write(tmp_path / "rules", "hooked.py", HOOK_RULES)
    with pytest.raises(ConfigError) as caught:
        load_registry(make_config(tmp_path, body, rules=tmp_path / "rules"))
    assert words in str(caught.value)


# ---------------------------------------------------------------------- capabilities
def test_capability_keys_are_common_to_every_system_class(tmp_path: Path) -> None:
    assert set(CAPABILITY_KEYS) | {"status_interval"} == set(common_system_spec())
    config = make_config(tmp_path, systems=tmp_path / "systems", body="""\
        [systems]
            [[big]]
            class = fancy
            max_cores = 32
            max_memory_mb = 65536
            max_walltime_s = 86400
            queues = long, short
            software = blast
        """)
    write(tmp_path / "systems", "decorated.py", DECORATED)
    registry = load_registry(config)
    options = system_options(registry.systems["fancy"], config.system("big"), tmp_path)
    assert options["max_cores"] == 32
    assert options["queues"] == ["long", "short"]
    assert options["software"] == ["blast"]
    assert options["colour"] == "blue"
    systems = create_systems(registry, config)
    assert isinstance(systems["big"], ExecutionSystem)
    assert systems["big"].options["max_memory_mb"] == 65536


# ---------------------------------------------------------------------- the last good set
def test_a_worker_falls_back_on_its_own_daemons_last_good_set_only(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "hooked.py", HOOK_RULES)
    config = make_config(tmp_path, rules=rules)
    load_registry(config, LoaderRole.worker("host/daemon-a"))  # loads: recorded
    write(rules, "broken.py", "def oops(:\n    pass\n")

    registry = load_registry(config, LoaderRole.worker("host/daemon-a"))
    assert "is_big" in registry.rules
    assert any("using the last plugin set that loaded" in n for n in registry.notes)
    # Another daemon's workers, the master and clients are told what is wrong.
    for role in (LoaderRole.worker("host/daemon-b"), LoaderRole.master("host/daemon-a"),
                 LoaderRole.client(), None):
        with pytest.raises(PluginError, match=r"broken\.py"):
            load_registry(config, role)


def test_only_daemon_processes_record_the_last_good_set(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    write(rules, "hooked.py", HOOK_RULES)
    config = make_config(tmp_path, rules=rules)
    load_registry(config, LoaderRole.client())
    assert not (tmp_path / "state" / "plugins").exists()
    load_registry(config, LoaderRole.master("host/daemon-a"))
    (record,) = (tmp_path / "state" / "plugins").iterdir()
    assert "host/daemon-a" in record.read_text()
    write(rules, "broken.py", "raise RuntimeError('no')\n")
    assert "is_big" in load_registry(config, LoaderRole.worker("host/daemon-a")).rules


# ---------------------------------------------------------------------- entry points
@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = plugin_pkg.lay_out(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop(plugin_pkg.PACKAGE, None)


def test_an_entry_point_package_registers_its_system_and_rule(tmp_path: Path,
                                                               plugin_site: Path) -> None:
    registry = load_registry(make_config(tmp_path, body="""\
        [systems]
            [[pkg]]
            class = pkg_local
        [routes]
            [[r]]
            system = pkg
            rules = pkg_owner_is
                [[[pkg_owner_is]]]
                owner = alice
        """))
    source = "entry point test_plugin (execd_test_plugin, execd-test-plugin 0.1.0)"
    assert registry.sources["system:pkg_local"] == source
    assert registry.sources["rule:pkg_owner_is"] == source


def test_execd_systems_lists_sources(tmp_path: Path, plugin_site: Path) -> None:
    write(tmp_path / "rules", "hooked.py", HOOK_RULES)
    config = tmp_path / "execd.ini"
    config.write_text(textwrap.dedent(f"""\
        [engine]
        state_dir = {tmp_path / 'state'}
        [plugins]
        routing_rules = {tmp_path / 'rules'}
        systems = {ROOT / 'systems'}
        [systems]
            [[nice]]
            class = local_nice
            max_memory_mb = 2048
            queues = short
        [routes]
            [[r]]
            system = nice
            rules = is_big
        """))
    env = {**os.environ, "PYTHONPATH": f"{plugin_site}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-m", "execution_engine", "-c", str(config),
                          "systems"], capture_output=True, text=True, env=env, check=True,
                         cwd=tmp_path).stdout
    assert f"nice: local_nice; max_memory_mb=2048 queues=short; from folder " \
           f"{ROOT / 'systems' / 'example_system.py'}" in out
    assert f"is_big(job, threshold='10'), from folder {tmp_path / 'rules' / 'hooked.py'}" in out
    assert "owner_in(job, owners), from built-in" in out
    assert "pkg_local: PkgLocalSystem, from entry point test_plugin" in out
    assert "r -> nice: is_big" in out
