"""The README's commands' shared part, scripts/lib/venv.sh: the checkout's virtual environment
is made with the system's Python, reused, and its activation command printed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT

LIB = ROOT / "scripts" / "lib" / "venv.sh"


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . {LIB}; {script}"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_venv_is_made_with_the_system_python_reused_and_explained(tmp_path: Path) -> None:
    first = bash("venv_base_python; venv_ensure; venv_hint", tmp_path)
    assert first.returncode == 0, first.stderr
    base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
    assert first.stdout.splitlines()[0].endswith(base)
    assert f"creating the virtual environment {tmp_path / '.venv'}" in first.stdout
    config = (tmp_path / ".venv" / "pyvenv.cfg").read_text()
    assert f"command = {base} -m venv" in config
    assert "  . .venv/bin/activate" in first.stdout
    pip = bash('"$VENV_PYTHON" -m pip --version', tmp_path)
    assert pip.returncode == 0 and str(tmp_path / ".venv") in pip.stdout
    again = bash("venv_ensure", tmp_path)
    assert again.returncode == 0 and "creating" not in again.stdout  # reused as it is


def test_a_broken_venv_is_made_again(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / ".venv" / "bin" / "python").chmod(0o755)
    done = bash('venv_ensure; "$VENV_PYTHON" -c "import sys; print(sys.prefix)"', tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(tmp_path / ".venv"))
