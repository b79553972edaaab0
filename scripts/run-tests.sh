#!/usr/bin/env bash
# Install everything the test suite needs and run all of it:
#   * the project with its test extras (pymongo, pytest, hypothesis, mongomock, aiosmtpd, drmaa,
#     matplotlib, and the MongoDB server wheel: the tests start their own mongod), in the
#     checkout's virtual environment ./.venv (created on first use with the system's python3:
#     see scripts/lib/venv.sh);
#   * as root, real one-host Grid Engine and Slurm/Torque clusters (scripts/provision-clusters.sh);
#     without root the cluster tests are skipped (under CI=true a skipped cluster test fails);
#   * ruff and mypy, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/venv.sh
. scripts/lib/venv.sh

step() { printf '\n==> %s\n' "$*"; }

step "installing execd with its test dependencies into .venv"
venv_ensure
venv_pip_install -e '.[test,dev]'
venv_hint

if [ "$(id -u)" = 0 ]; then
  step "provisioning the Grid Engine and Slurm test clusters"
  bash scripts/provision-clusters.sh all >/dev/null
  # shellcheck disable=SC1091
  . /etc/profile.d/execd-clusters.sh
else
  echo "not root: cluster tests will be skipped (run as root to provision the clusters)" >&2
fi

step "ruff"
"$VENV_PYTHON" -m ruff check execution_engine sim benchmarks tests routing_rules systems
step "mypy"
"$VENV_PYTHON" -m mypy

step "pytest"
exec "$VENV_PYTHON" -m pytest "$@"
