# shellcheck shell=bash
# One-host Son of Grid Engine 8.1.9 cell (Debian gridengine-* packages) for the cluster tests:
# sge_qmaster + sge_execd on this host, queue all.q, parallel environment smp, fast scheduler,
# DRMAA 1.0 library. Sourced by scripts/provision-clusters.sh (needs lib/common.sh).

export SGE_ROOT=/var/lib/gridengine
export SGE_CELL=default
SGE_PKGS="gridengine-master gridengine-exec gridengine-client gridengine-drmaa1.0"
SGE_SPOOL=/var/spool/gridengine
SGE_RUNDIR=/var/run/gridengine
SGE_QMASTER_PID=$SGE_RUNDIR/qmaster.pid
SGE_EXECD_PID=$SGE_RUNDIR/execd.pid
SGE_HOST=$(hostname)
# Tests run several jobs at once: fewer than 4 slots on a 2-core CI machine starves them.
SGE_SLOTS=${SGE_SLOTS:-$(nproc)}

sge_drmaa_library() {  # real path of libdrmaa.so as shipped by gridengine-drmaa1.0
  local lib
  lib=$(dpkg -L gridengine-drmaa1.0 2>/dev/null | grep -E '/libdrmaa\.so(\.[0-9.]+)?$' | head -n1) || true
  [ -n "$lib" ] && readlink -f "$lib"
}

# qconf & co. as root need root to be an SGE manager; until then run them as sgeadmin.
sge_as_admin() { runuser -u sgeadmin -- env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" "$@"; }

# SGE resolves hostname -> IP -> canonical name and insists they agree. /etc/hosts here maps
# the hostname to 127.0.0.1, whose first (reverse) name is "localhost", so SGE would call this
# host "localhost" and refuse the execd. Put "IP HOST" first; keep a backup of the original.
sge_fix_hostname_resolution() {
  step "sge: hostname resolution"
  local ip tmp
  ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1) || true
  [ -n "$ip" ] || ip=$(hostname -I 2>/dev/null | awk '{print $1}')
  [ -n "$ip" ] || ip=127.0.1.1
  [ -e /etc/hosts.pre-execd ] || cp -p /etc/hosts /etc/hosts.pre-execd
  if [ "$(getent hosts "$SGE_HOST" | awk 'NR==1 {print $1}')" != "$ip" ] ||
     [ "$(getent hosts "$ip" | awk 'NR==1 {print $2}')" != "$SGE_HOST" ]; then
    tmp=$(mktemp -p "$PROV_TMP")
    { echo "$ip $SGE_HOST  # added by execd provision-clusters.sh"
      grep -v '# added by execd provision-clusters.sh' /etc/hosts; } > "$tmp"
    cat "$tmp" > /etc/hosts   # rewrite in place: /etc/hosts may be a bind mount
  fi
  log "sge: $SGE_HOST -> $(getent hosts "$SGE_HOST" | awk 'NR==1 {print $1}') -> $(getent hosts "$ip" | awk 'NR==1 {print $2}')"
}

sge_install() {
  step "sge: packages"
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  if [ -n "$(missing_pkgs $SGE_PKGS)" ]; then
    # No questions during install: the postinst scripts configure the cell from these answers.
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-client shared/gridenginemaster string $SGE_HOST
gridengine-master shared/gridenginemaster string $SGE_HOST
gridengine-exec shared/gridenginemaster string $SGE_HOST
EOF
  fi
  # shellcheck disable=SC2086
  apt_install $SGE_PKGS
  # The client postinst writes act_qmaster from debconf; make sure it names this host
  # (the hostname may have changed since the packages were installed).
  install -d -o sgeadmin -g sgeadmin -m 755 "$SGE_ROOT/$SGE_CELL/common"
  if [ "$(cat "$SGE_ROOT/$SGE_CELL/common/act_qmaster" 2>/dev/null)" != "$SGE_HOST" ]; then
    echo "$SGE_HOST" > "$SGE_ROOT/$SGE_CELL/common/act_qmaster"
    chown sgeadmin:sgeadmin "$SGE_ROOT/$SGE_CELL/common/act_qmaster"
  fi
  install -d -o sgeadmin -g sgeadmin -m 755 "$SGE_RUNDIR" "$SGE_SPOOL/qmaster" \
    "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/spooldb" "$SGE_SPOOL/execd"
  if [ ! -e "$SGE_SPOOL/spooldb/sge" ]; then   # the master postinst normally did this already
    log "sge: init_cluster"
    runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster \
      "$SGE_ROOT" "$SGE_CELL" "$SGE_SPOOL/spooldb" sgeadmin >&2
  fi
}

sge_qmaster_up() { qconf -sh >/dev/null 2>&1; }

sge_start_qmaster() {
  step "sge: sge_qmaster"
  if sge_qmaster_up; then
    log "sge: sge_qmaster already running (pid $(pidfile_pid "$SGE_QMASTER_PID" || echo '?'))"
  else
    # Debian's init script exports a misspelt variable; the qmaster reads SGE_QMASTER_PIDFILE.
    SGE_QMASTER_PIDFILE=$SGE_QMASTER_PID /usr/sbin/sge_qmaster ||
      die "sge_qmaster did not start (see $SGE_SPOOL/qmaster/messages)"
    wait_for 60 "sge_qmaster to answer qconf" sge_qmaster_up ||
      die "sge_qmaster does not answer (see $SGE_SPOOL/qmaster/messages)"
    log "sge: sge_qmaster started (pid $(pidfile_pid "$SGE_QMASTER_PID" || echo '?'))"
  fi
}

# qconf_do ARGS...: qconf, quiet on success (it reports every change on stderr), its
# message in the failure otherwise.
qconf_do() {
  local out
  out=$(qconf "$@" 2>&1) || die "qconf $* failed: $out"
}

# qconf_put KIND NAME FILE: add (-A<kind>) or modify (-M<kind>) an object from FILE.
qconf_put() {
  local kind=$1 name=$2 file=$3 list
  case $kind in
    q) list=-sql ;; p) list=-spl ;; hgrp) list=-shgrpl ;; e) list=-sel ;;
  esac
  if qconf "$list" 2>/dev/null | grep -qxF "$name"; then
    qconf_do "-M$kind" "$file"
  else
    qconf_do "-A$kind" "$file"
  fi
}

sge_configure() {
  step "sge: cell configuration"
  local conf
  # init_cluster only made sgeadmin a manager; make root one so that qconf works as root.
  if ! qconf -sm 2>/dev/null | grep -qx root; then
    sge_as_admin qconf -am root >/dev/null 2>&1 || die "cannot make root an SGE manager (qconf -am root as sgeadmin)"
  fi
  qconf -sh 2>/dev/null | grep -qx "$SGE_HOST" || qconf_do -ah "$SGE_HOST"
  qconf -ss 2>/dev/null | grep -qx "$SGE_HOST" || qconf_do -as "$SGE_HOST"

  conf=$(mktemp -d -p "$PROV_TMP")
  # Global config: jobs of users below min_uid/min_gid (default 1000) are refused, root's too.
  qconf -sconf global > "$conf/global.old"
  sed -e 's/^min_uid .*/min_uid                      0/' \
      -e 's/^min_gid .*/min_gid                      0/' \
      -e 's/^load_report_time .*/load_report_time             00:00:10/' "$conf/global.old" > "$conf/global"
  cmp -s "$conf/global.old" "$conf/global" || qconf_do -Mconf "$conf/global"

  # Scheduler: the default (a pass every 15 s, none on submit/finish) runs ~0.14 jobs/s.
  # One pass per second plus a pass 1 s after each submit/finish gives ~slots jobs/s.
  qconf -ssconf > "$conf/sched.old"
  sed -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
      -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
      -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' \
      -e 's/^job_load_adjustments .*/job_load_adjustments              NONE/' \
      -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time        0:0:0/' \
      "$conf/sched.old" > "$conf/sched"
  cmp -s "$conf/sched.old" "$conf/sched" || qconf_do -Msconf "$conf/sched"

  # Execution host (must exist before a queue can name it).
  cat > "$conf/exechost" <<EOF
hostname              $SGE_HOST
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
  qconf -sel 2>/dev/null | grep -qxF "$SGE_HOST" || qconf_do -Ae "$conf/exechost"

  printf 'group_name @allhosts\nhostlist %s\n' "$SGE_HOST" > "$conf/allhosts"
  qconf_put hgrp @allhosts "$conf/allhosts"

  # Parallel environment smp: `-pe smp N` takes N slots on one host.
  cat > "$conf/smp" <<EOF
pe_name            smp
slots              $SGE_SLOTS
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
  qconf_put p smp "$conf/smp"

  # Queue all.q: no load thresholds (a busy CI machine must not put the queue in alarm state).
  cat > "$conf/all.q" <<EOF
qname                 all.q
hostlist              @allhosts
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp
rerun                 FALSE
slots                 $SGE_SLOTS
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
  qconf_put q all.q "$conf/all.q"
  log "sge: all.q and pe smp have $SGE_SLOTS slots"
}

# The execd writes its pid file under the spool unless told otherwise (one started by
# Debian's init script would); either counts as running.
sge_execd_running() {
  pid_alive "$SGE_EXECD_PID" sge_execd || pid_alive "$SGE_SPOOL/execd/$SGE_HOST/execd.pid" sge_execd
}

# The queue instance exists and has none of the states that stop it taking jobs
# (u unknown: execd not connected; E error; a alarm; d/D disabled; s/S suspended; C calendar).
sge_queue_ok() {
  local line
  line=$(qstat -f -q "all.q@$SGE_HOST" 2>/dev/null | awk -v q="all.q@$SGE_HOST" '$1 == q') || return 1
  [ -n "$line" ] && ! echo "$line" | awk '{print $6}' | grep -q '[uEadDsSCc]'
}

sge_start_execd() {
  step "sge: sge_execd"
  if sge_execd_running; then
    log "sge: sge_execd already running"
  else
    SGE_EXECD_PIDFILE=$SGE_EXECD_PID /usr/sbin/sge_execd ||
      die "sge_execd did not start (see $SGE_SPOOL/execd/$SGE_HOST/messages)"
  fi
  # A job that failed in the shepherd can leave the queue instance in error state (E).
  qmod -c "all.q@$SGE_HOST" >/dev/null 2>&1 || true
  wait_for 90 "all.q@$SGE_HOST to accept jobs" sge_queue_ok ||
    die "queue all.q@$SGE_HOST not available: $(qstat -f 2>&1 | tr '\n' ' ')"
  log "sge: sge_execd up (pid $(pidfile_pid "$SGE_EXECD_PID" || echo '?')), all.q@$SGE_HOST takes jobs"
}

sge_provision() {
  PROV_STEP="sge: settings"
  case $SGE_SLOTS in ''|*[!0-9]*) die "SGE_SLOTS must be a number, not '$SGE_SLOTS'" ;; esac
  [ "$SGE_SLOTS" -ge 4 ] || SGE_SLOTS=4
  sge_fix_hostname_resolution
  sge_install
  sge_start_qmaster
  sge_configure
  sge_start_execd
}

sge_smoke_test() {
  step "sge: smoke test (qsub -sync y /bin/true)"
  local out
  out=$(cd /tmp && timeout 120 qsub -b y -sync y -N execd_smoke -o /dev/null -e /dev/null /bin/true 2>&1) ||
    die "SGE smoke test: qsub -sync y failed: $(echo "$out" | tr '\n' ' ')"
  log "sge: $(echo "$out" | tr '\n' ' ')"
}

sge_stop() {
  step "sge: stopping daemons"
  stop_by_pidfile "$SGE_EXECD_PID" sge_execd
  stop_by_pidfile "$SGE_SPOOL/execd/$SGE_HOST/execd.pid" sge_execd
  stop_by_pidfile "$SGE_QMASTER_PID" sge_qmaster
  stop_by_pidfile "$SGE_SPOOL/qmaster/qmaster.pid" sge_qmaster   # the qmaster's default pid file
}
