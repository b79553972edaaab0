"""The test plugin package, and how the tests make it visible without installing it globally.

:func:`lay_out` writes what ``pip install`` would: the package and a ``.dist-info`` directory
with the entry points of ``pyproject.toml``, into a directory the caller puts on ``sys.path``
(in-process tests) or ``PYTHONPATH`` (daemon tests). Other tests running at the same time in the
same environment never see the plugin, and there is nothing to uninstall.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "execd_test_plugin"


def lay_out(site: Path) -> Path:
    """Make ``site`` hold the installed distribution; returns ``site``."""
    project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    site.mkdir(parents=True, exist_ok=True)
    shutil.copytree(HERE / PACKAGE, site / PACKAGE, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    dist_name = project["name"].replace("-", "_")
    dist_info = site / f"{dist_name}-{project['version']}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in entries.items())
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (dist_info / "RECORD").write_text("")
    return site
