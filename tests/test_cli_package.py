"""The command line package: each module imports on its own (no import cycle), the console
script's entry point resolves, and no command reaches into the jobs collection."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "execution_engine" / "cli"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first_and_alone(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import execution_engine.cli.{module}"],
                            capture_output=True, text=True, cwd=ROOT, check=False, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_console_script_is_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["execd"] == "execution_engine.cli:main"
    from execution_engine.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0


def test_no_command_touches_the_jobs_collection() -> None:
    """Only the store touches ``jobs``: commands go through the client library or the store."""
    files = [*PACKAGE.glob("*.py"), ROOT / "execution_engine" / "client.py"]
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "jobs" and \
                    isinstance(node.value, ast.Attribute | ast.Name):
                owner = node.value.attr if isinstance(node.value, ast.Attribute) \
                    else node.value.id
                assert owner not in ("store", "db"), f"{path.name}:{node.lineno}: {owner}.jobs"
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                assert node.slice.value != "jobs", f"{path.name}:{node.lineno}: ['jobs']"
