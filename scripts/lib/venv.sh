# shellcheck shell=bash
# The checkout's virtual environment, shared by scripts/demo.sh and scripts/run-tests.sh.
# Sourced, never run, from the checkout's top directory.
#
# Debian 12 and Ubuntu 24.04 refuse `pip install` into the system Python (PEP 668,
# "externally-managed-environment"), so everything is installed into ./.venv instead: made with
# the system's /usr/bin/python3 when there is one (else the first python3 on PATH), and reused
# by later runs. `python3 -m venv` needs Debian's python3-venv package; as root it is installed
# when missing, otherwise the script says which command installs it.

VENV_DIR="$PWD/.venv"
VENV_PYTHON="$VENV_DIR/bin/python"

venv_base_python() {  # the interpreter the environment is made with
  if [ -x /usr/bin/python3 ]; then
    echo /usr/bin/python3
  elif command -v python3 >/dev/null 2>&1; then
    command -v python3
  else
    echo "error: no python3 found; install Python 3.11 or newer" >&2
    return 1
  fi
}

venv_ensure() {  # creates ./.venv when it does not exist or does not run
  if [ -x "$VENV_PYTHON" ] && "$VENV_PYTHON" -c '' >/dev/null 2>&1; then
    return 0
  fi
  local base
  base=$(venv_base_python)
  if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: execd needs Python 3.11 or newer; $base is $("$base" -V 2>&1)" >&2
    return 1
  fi
  # Debian's python3 lacks ensurepip (hence `-m venv`) until python3-venv is installed.
  if ! "$base" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "==> installing python3-venv (needed to create $VENV_DIR)"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      echo "error: $base cannot create a virtual environment; install it with:" >&2
      echo "  sudo apt-get install python3-venv" >&2
      return 1
    fi
  fi
  echo "==> creating the virtual environment $VENV_DIR (with $base)"
  "$base" -m venv --clear "$VENV_DIR"
}

venv_pip_install() {  # venv_pip_install SPEC...: into ./.venv, quietly
  "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check "$@"
}

venv_hint() {  # how to use what was installed from one's own shell
  printf '\nexecd is installed in %s; to use it in your shell:\n  . %s/bin/activate\n' \
    "$VENV_DIR" "${VENV_DIR#"$PWD/"}"
}
