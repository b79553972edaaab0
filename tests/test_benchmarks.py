"""The benchmarks (``benchmarks/``, run by hand from the checkout, never installed): their entry
points start, the A/B comparison runs two revisions, and the counted systems plugin of the
cluster benchmark loads through the engine's plugin loader."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib

import pytest
import setuptools

from execution_engine.config import parse_config
from execution_engine.plugins import load_registry
from tests.conftest import ROOT

PLUGINS = ROOT / "benchmarks" / "plugins"


@pytest.mark.parametrize("module", ["benchmarks.engine", "benchmarks.ab", "benchmarks.clusters"])
def test_each_benchmark_runs_from_the_checkout(module: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"python -m {module}" in result.stdout


def test_the_benchmarks_are_not_installed_with_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = project["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(str(ROOT), include=find["include"],
                                        exclude=find.get("exclude", ()))
    assert "sim" in packages and "execution_engine.systems" in packages
    assert not [name for name in packages if name.split(".")[0] in ("benchmarks", "tests")]
    assert project["project"]["scripts"]["execd-sim"] == "sim.execd_sim:main"
    assert "benchmarks" in project["tool"]["mypy"]["packages"]


def test_the_counted_systems_plugin_loads_with_its_count_option(tmp_path) -> None:
    count_file = tmp_path / "calls.jsonl"
    config = parse_config(textwrap.dedent(f"""\
        [engine]
        state_dir = {tmp_path / "state"}
        [plugins]
        systems = {PLUGINS}
        [systems]
        [[bench]]
        class = counted_slurm
        bin_dir = {tmp_path}
        count_file = {count_file}
        [routes]
        [[default]]
        system = bench
        """), None)
    registry = load_registry(config)
    module = PLUGINS / "counted_systems.py"
    for kind in ("counted_ogs", "counted_slurm", "counted_torque"):
        assert registry.sources[f"system:{kind}"] == f"folder {module}"
        assert "count_file" in registry.systems[kind].option_spec
    assert registry.systems["counted_slurm"].__name__ == "CountedSlurm"


def test_ab_measures_a_revision_against_the_working_tree(
        capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import ab

    def worktrees() -> int:
        listing = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], check=True,
                                 capture_output=True, text=True).stdout
        return len(listing.splitlines())

    before = worktrees()
    assert ab.main(["--rounds", "2", "--jobs", "20"]) == 0
    out = capsys.readouterr().out
    for line in ("round 1 A:", "round 1 B:", "round 2 B:", "round 2 A:", "B / A: median",
                 "A / pool per round:", "B / pool per round:"):
        assert line in out, out
    assert worktrees() == before  # revision A's checkout is gone
    with pytest.raises(SystemExit, match="cannot check out 'no-such-rev'"):
        ab.main(["--base", "no-such-rev", "--rounds", "1", "--jobs", "5"])
