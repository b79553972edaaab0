#!/usr/bin/env bash
# Install execd and run it on its embedded default (its own MongoDB, the Local system), push a
# small demo load through it, show the result, and stop it. State goes to ./demo-state.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=conf/demo.ini
JOBS=${DEMO_JOBS:-40}

echo "==> installing execd (with the embedded MongoDB server)"
python3 -m pip install --quiet --disable-pip-version-check -e '.[embedded]'

echo "==> starting the daemon"
execd -c "$CONFIG" stop >/dev/null 2>&1 || true
execd -c "$CONFIG" start
trap 'echo "==> stopping the daemon"; execd -c "$CONFIG" stop' EXIT

echo "==> a first job, from the command line"
job=$(execd -c "$CONFIG" submit --name hello -- sh -c 'echo "hello from $EXECD_JOB_ID on $(hostname)"')
execd -c "$CONFIG" wait "$job" --timeout 60
cat "$(execd -c "$CONFIG" show "$job" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_dir"])')/job.stdout"

echo "==> a burst of $JOBS jobs from the load generator"
execd-sim -c "$CONFIG" --burst "$JOBS" --timeout 300

echo "==> engine status"
execd -c "$CONFIG" status
