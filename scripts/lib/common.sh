# shellcheck shell=bash
# Helpers shared by scripts/provision-clusters.sh and scripts/lib/{sge,slurm}.sh.
# Sourced, never run. Progress goes to stderr; stdout is kept for the final KEY=VALUE lines.

PROV_T0=$(date +%s.%N)
PROV_STEP="start"          # what we are doing now; named in the failure message
PROV_APT_UPDATED=0         # apt-get update at most once per run
PROV_TMP=""                # scratch directory of this run, removed on exit (prov_tmp_init)

elapsed() { awk -v a="$PROV_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[provision +%ss] %s\n' "$(elapsed)" "$*" >&2; }
step() { PROV_STEP=$*; log "$*"; }
die() { printf '[provision +%ss] FAILED: %s\n' "$(elapsed)" "$*" >&2; exit 1; }

prov_tmp_init() {
  PROV_TMP=$(mktemp -d -t execd-provision.XXXXXX)
  chmod 755 "$PROV_TMP"   # apt-get download writes below it as user _apt
}
prov_tmp_cleanup() { [ -z "$PROV_TMP" ] || rm -rf "$PROV_TMP"; }

# ---------------------------------------------------------------- packages
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing_pkgs() {  # prints the packages of "$@" that are not installed
  local p
  for p in "$@"; do pkg_installed "$p" || printf '%s ' "$p"; done
}

# apt-get that waits while another apt/dpkg holds the lock (it never kills the holder:
# CI images and developers' machines often run unattended-upgrades or a parallel install).
apt_get() {
  local i out rc
  for i in $(seq 1 120); do
    set +e
    out=$(apt-get -q -o DPkg::Lock::Timeout=60 "$@" 2>&1); rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then printf '%s\n' "$out" | tail -n 2 >&2; return 0; fi
    if printf '%s' "$out" | grep -qiE 'could not get lock|unable to acquire|is another process using it|dpkg was interrupted'; then
      if printf '%s' "$out" | grep -qi 'dpkg was interrupted'; then
        log "dpkg was interrupted: running dpkg --configure -a"; dpkg --configure -a >&2 || true
      fi
      log "apt/dpkg busy (attempt $i), waiting 5s"; sleep 5; continue
    fi
    printf '%s\n' "$out" | tail -n 30 >&2
    return "$rc"
  done
  return 1
}

apt_update_once() {
  [ "$PROV_APT_UPDATED" = 1 ] && return 0
  log "apt-get update"
  apt_get update
  PROV_APT_UPDATED=1
}

# Installs the missing ones of "$@". --no-remove: never remove a package to satisfy a
# conflict (slurm-wlm-torque vs gridengine-client): fail loudly instead.
apt_install() {
  local missing
  missing=$(missing_pkgs "$@")
  if [ -z "$missing" ]; then log "packages already installed: $*"; return 0; fi
  apt_update_once
  log "apt-get install $missing"
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  apt_get install -y --no-install-recommends --no-remove $missing ||
    die "apt-get install $missing failed (see the apt output above)"
}

# Without systemd, package postinst scripts would try to start daemons through invoke-rc.d
# (gridengine-*, munge, slurm*, exim4). A policy-rc.d answering 101 forbids that: we start
# the daemons ourselves, with pid files we know. Removed again on exit if we created it.
PROV_POLICY_RC_CREATED=0
forbid_service_starts() {
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from execd scripts/provision-clusters.sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    PROV_POLICY_RC_CREATED=1
  fi
}
allow_service_starts() {
  if [ "$PROV_POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; PROV_POLICY_RC_CREATED=0; fi
}

# ---------------------------------------------------------------- daemons, by pid file only
pidfile_pid() { [ -s "$1" ] && head -n1 "$1" | tr -dc 0-9; }

# proc_alive PID NAME: PID is a live (not zombie) process whose command name is NAME.
# Checking the name guards against a stale pid file naming a reused pid.
proc_alive() {
  [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] &&
    ! grep -qE '^[0-9]+ \(.*\) [ZX]' "/proc/$1/stat" 2>/dev/null
}
pid_alive() { proc_alive "$(pidfile_pid "$1")" "$2"; }  # pid_alive PIDFILE NAME

# stop_by_pidfile PIDFILE NAME: TERM (then KILL after 30 s) the process recorded in PIDFILE.
# Only ever that pid: other instances of the same program on the machine are left alone.
# Waits on the pid, not the file: sge_qmaster removes its pid file long before it exits.
stop_by_pidfile() {
  local pid i
  pid=$(pidfile_pid "$1") || true
  if proc_alive "$pid" "$2"; then
    log "stopping $2 (pid $pid, from $1)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do proc_alive "$pid" "$2" || break; sleep 0.1; done
    if proc_alive "$pid" "$2"; then log "$2 still alive after 30s: KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$1"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.25 s.
wait_for() {
  local t=$1 what=$2 i
  shift 2
  for i in $(seq 1 $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  log "timeout after ${t}s waiting for $what"
  return 1
}

tcp_listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
