#!/usr/bin/env bash
# Install execd into the checkout's virtual environment ./.venv (created on first use, with the
# system's python3: see scripts/lib/venv.sh), run it on its embedded default (its own MongoDB,
# the Local system), push a small demo load through it, show the result, and stop it. State
# goes to ./demo-state.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/venv.sh
. scripts/lib/venv.sh
CONFIG=conf/demo.ini
JOBS=${DEMO_JOBS:-40}

venv_ensure
echo "==> installing execd into .venv (with the embedded MongoDB server)"
venv_pip_install -e '.[embedded]'
export PATH="$VENV_DIR/bin:$PATH"

echo "==> starting the daemon"
execd -c "$CONFIG" stop >/dev/null 2>&1 || true
# Stopped on every exit from here on, failures included (a half-started daemon too).
trap 'echo "==> stopping the daemon"; execd -c "$CONFIG" stop; venv_hint' EXIT
execd -c "$CONFIG" start

echo "==> a first job, from the command line"
job=$(execd -c "$CONFIG" submit --name hello -- sh -c 'echo "hello from $EXECD_JOB_ID on $(hostname)"')
execd -c "$CONFIG" wait "$job" --timeout 60
cat "$(execd -c "$CONFIG" show "$job" --json | python -c 'import json,sys; print(json.load(sys.stdin)["job_dir"])')/job.stdout"

echo "==> a burst of $JOBS jobs from the load generator"
execd-sim -c "$CONFIG" --burst "$JOBS" --timeout 300

echo "==> engine status"
execd -c "$CONFIG" status
