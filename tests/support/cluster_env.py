"""Where the one-host test clusters are: the one reader of the provisioning's environment.

``scripts/provision-clusters.sh`` writes ``/etc/profile.d/execd-clusters.sh`` (``export NAME=value``
lines); the cluster tests and the cluster benchmark (``benchmarks/clusters.py``) read it here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

ENV_FILE = Path("/etc/profile.d/execd-clusters.sh")
DEFAULTS = {
    "SGE_ROOT": "/var/lib/gridengine",
    "SGE_CELL": "default",
    "DRMAA_LIBRARY_PATH": "/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0",
    "EXECD_TORQUE_BIN": "/opt/slurm-torque/bin",
}
"""The variables read, and where the provisioning puts them by default."""


def cluster_environment(defaults: Mapping[str, str] | None = None) -> dict[str, str]:
    """SGE_ROOT, SGE_CELL, DRMAA_LIBRARY_PATH, EXECD_TORQUE_BIN: this process's environment,
    else the provisioning's env file (its ``export NAME=value`` lines), else ``defaults``."""
    found = dict(defaults or {})
    with contextlib.suppress(OSError):
        for line in ENV_FILE.read_text().splitlines():
            key, sep, value = line.removeprefix("export ").partition("=")
            if line.startswith("export ") and sep and key in DEFAULTS and "$" not in value:
                found[key] = value.strip().strip("'\"")
    for name in DEFAULTS:
        if os.environ.get(name):
            found[name] = os.environ[name]
    return found
