# shellcheck shell=bash
# One-host Slurm 22.05 (Debian slurm-wlm) for the cluster tests: munged, slurmctld and slurmd
# on this host, partitions debug (default) and batch; plus the Torque/PBS command wrappers
# (qsub, qstat, qdel, ...) of Debian's slurm-wlm-torque, unpacked into $TORQUE_PREFIX/bin.
# Sourced by scripts/provision-clusters.sh (needs lib/common.sh).

# perl modules: the Torque wrappers are perl scripts using the Slurm perl API.
SLURM_PKGS="munge slurm-client slurmctld slurmd slurm-wlm libslurm-perl libslurmdb-perl libswitch-perl perl"
SLURM_CONF_DIR=/etc/slurm
SLURM_CONF=$SLURM_CONF_DIR/slurm.conf
SLURM_STATE=/var/lib/slurm
SLURM_LOGDIR=/var/log/slurm
SLURM_HOST=$(hostname -s)
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGED_PID=/run/munge/munged.pid
# Finished jobs stay visible to squeue/scontrol/qstat for this many seconds (default 300).
SLURM_MIN_JOB_AGE=${SLURM_MIN_JOB_AGE:-3600}
TORQUE_PREFIX=${TORQUE_PREFIX:-/opt/slurm-torque}
TORQUE_BIN=$TORQUE_PREFIX/bin

slurm_install() {
  step "slurm: packages"
  # shellcheck disable=SC2086
  apt_install $SLURM_PKGS
}

# slurm-wlm-torque declares "Conflicts: gridengine-client": both ship /usr/bin/qsub, qstat,
# qdel, qalter, qhold, qrls, without alternatives, so installing it with apt removes Grid
# Engine. Unpack the package into $TORQUE_PREFIX instead; the execution system takes the
# command paths from its configuration (EXECD_TORQUE_BIN in the tests).
slurm_install_torque_wrappers() {
  step "slurm: Torque/PBS wrappers in $TORQUE_BIN"
  local ver tmp
  ver=$(dpkg-query -W -f='${Version}' slurm-client)
  if [ "$(cat "$TORQUE_PREFIX/.version" 2>/dev/null)" = "$ver" ] && [ -x "$TORQUE_BIN/qsub" ]; then
    log "slurm: Torque wrappers $ver already unpacked"
    return 0
  fi
  tmp=$(mktemp -d -p "$PROV_TMP")
  chown _apt "$tmp" 2>/dev/null || true   # apt-get download runs as user _apt
  if ! (cd "$tmp" && apt_get download "slurm-wlm-torque=$ver"); then
    PROV_APT_UPDATED=0; apt_update_once   # stale package lists: the .deb URL moved
    (cd "$tmp" && apt_get download "slurm-wlm-torque=$ver") ||
      die "cannot download slurm-wlm-torque=$ver (must match slurm-client)"
  fi
  dpkg-deb -x "$tmp"/slurm-wlm-torque_*.deb "$tmp/x"
  mkdir -p "$TORQUE_BIN" "$TORQUE_PREFIX/man/man1"
  cp -f "$tmp"/x/usr/bin/* "$TORQUE_BIN"/
  cp -f "$tmp"/x/usr/share/man/man1/* "$TORQUE_PREFIX/man/man1/" 2>/dev/null || true
  # qsub runs "$(dirname qsub)/sbatch" (FindBin) and mpiexec runs ./srun: link them beside.
  local b
  for b in sbatch salloc srun scontrol squeue scancel sacct sinfo; do
    ln -sfn "/usr/bin/$b" "$TORQUE_BIN/$b"
  done
  # qalter hard-codes /usr/slurm/bin/scontrol.
  sed -i 's#/usr/slurm/bin/scontrol#/usr/bin/scontrol#' "$TORQUE_BIN/qalter"
  echo "$ver" > "$TORQUE_PREFIX/.version"
  log "slurm: Torque wrappers $ver unpacked"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

slurm_start_munge() {
  step "slurm: munged"
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "slurm: creating munge key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if munge_ok; then
    log "slurm: munged already running (pid $(pidfile_pid "$MUNGED_PID" || echo '?'))"
  else
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    wait_for 10 "munged" munge_ok || die "munged does not answer (see /var/log/munge/munged.log)"
    log "slurm: munged started (pid $(pidfile_pid "$MUNGED_PID" || echo '?'))"
  fi
}

# Writes slurm.conf; returns 0 if it changed (the daemons must then be restarted).
slurm_write_conf() {
  step "slurm: slurm.conf"
  local nodehw new
  install -d -m 0755 "$SLURM_CONF_DIR" "$SLURM_STATE" "$SLURM_STATE/slurmctld" "$SLURM_STATE/slurmd" "$SLURM_LOGDIR"
  # The real hardware as slurmd sees it ("CPUs=2 Boards=1 ... RealMemory=24105"): a node
  # declared bigger than it is gets drained.
  nodehw=$(slurmd -C 2>/dev/null | grep -m1 '^NodeName=' | sed -e 's/^NodeName=[^ ]*//') || true
  [ -n "$nodehw" ] || nodehw="CPUs=$(nproc) RealMemory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 ))"

  # Slurm sets only SLURM_* variables; Torque-style job scripts expect the PBS_* ones.
  cat > "$SLURM_CONF_DIR/pbs-env.sh" <<'EOF'
#!/bin/sh
# Slurm TaskProlog: each "export NAME=VALUE" line printed here is added to the job's environment
echo "export PBS_JOBID=${SLURM_JOB_ID}"
echo "export PBS_JOBNAME=${SLURM_JOB_NAME}"
echo "export PBS_O_WORKDIR=${SLURM_SUBMIT_DIR}"
echo "export PBS_O_HOST=${SLURM_SUBMIT_HOST}"
echo "export PBS_QUEUE=${SLURM_JOB_PARTITION}"
echo "export PBS_ENVIRONMENT=PBS_BATCH"
[ -n "${SLURM_ARRAY_TASK_ID:-}" ] && echo "export PBS_ARRAYID=${SLURM_ARRAY_TASK_ID}"
exit 0
EOF
  chmod 0755 "$SLURM_CONF_DIR/pbs-env.sh"

  new=$(mktemp -p "$PROV_TMP")
  cat > "$new" <<EOF
# generated by execd scripts/provision-clusters.sh: one-host test cluster
ClusterName=execdtest
SlurmctldHost=${SLURM_HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# no cgroups in containers: track processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$SLURM_CONF_DIR/pbs-env.sh
# no slurmdbd: plain 'sacct' fails ("Slurm accounting storage is disabled"), but every
# finished job is appended to JobCompLoc (with ExitCode=N:S), which 'sacct -c' reads.
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_LOGDIR/jobcomp.log
StateSaveLocation=$SLURM_STATE/slurmctld
SlurmdSpoolDir=$SLURM_STATE/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$SLURM_LOGDIR/slurmctld.log
SlurmdLogFile=$SLURM_LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# batch_sched_delay=0 (default 3 s) is what makes 200 jobs take seconds instead of minutes
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# finished jobs stay visible to squeue/scontrol/qstat this long (seconds)
MinJobAge=$SLURM_MIN_JOB_AGE
MaxJobCount=100000
# reject impossible requests (too many CPUs/nodes, ...) at submit time instead of PENDING forever
EnforcePartLimits=ALL
ReturnToService=2
SlurmdTimeout=300
SlurmctldTimeout=120
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$SLURM_HOST NodeAddr=127.0.0.1 $nodehw State=UNKNOWN
# OverSubscribe=FORCE:10: up to 10 jobs per core, so that test jobs (mostly sleeping) do not queue
PartitionName=debug Nodes=$SLURM_HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:10
PartitionName=batch Nodes=$SLURM_HOST Default=NO MaxTime=INFINITE State=UP OverSubscribe=FORCE:10
EOF
  if cmp -s "$new" "$SLURM_CONF"; then
    log "slurm: $SLURM_CONF unchanged"
    return 1
  fi
  [ -f "$SLURM_CONF" ] && cp -f "$SLURM_CONF" "$SLURM_CONF.bak"
  install -m 0644 "$new" "$SLURM_CONF"
  log "slurm: wrote $SLURM_CONF"
  return 0
}

slurmctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
# A slurmd started without our pid file still holds its port (6818).
slurmd_running() { pid_alive "$SLURMD_PID" slurmd || tcp_listening 127.0.0.1 6818; }

slurm_node_state() { sinfo -h -n "$SLURM_HOST" -o '%T' 2>/dev/null | head -n1; }

slurm_start_daemons() {
  local conf_changed=$1
  step "slurm: slurmctld and slurmd"
  if [ "$conf_changed" = 1 ]; then
    # A changed node or partition definition needs a restart, not just 'scontrol reconfigure'.
    # Queued jobs survive: slurmctld keeps them in StateSaveLocation.
    stop_by_pidfile "$SLURMD_PID" slurmd
    stop_by_pidfile "$SLURMCTLD_PID" slurmctld
  fi
  if slurmctld_up; then
    log "slurm: slurmctld already running (pid $(pidfile_pid "$SLURMCTLD_PID" || echo '?'))"
  else
    /usr/sbin/slurmctld || die "slurmctld did not start (see $SLURM_LOGDIR/slurmctld.log)"
    wait_for 30 "slurmctld" slurmctld_up || die "slurmctld does not answer (see $SLURM_LOGDIR/slurmctld.log)"
    log "slurm: slurmctld started (pid $(pidfile_pid "$SLURMCTLD_PID" || echo '?'))"
  fi
  if slurmd_running; then
    log "slurm: slurmd already running (pid $(pidfile_pid "$SLURMD_PID" || echo '?'))"
  else
    /usr/sbin/slurmd || die "slurmd did not start (see $SLURM_LOGDIR/slurmd.log)"
    wait_for 30 "slurmd pid file" pid_alive "$SLURMD_PID" slurmd || die "slurmd died (see $SLURM_LOGDIR/slurmd.log)"
    log "slurm: slurmd started (pid $(pidfile_pid "$SLURMD_PID" || echo '?'))"
  fi

  # Wait until the node takes jobs; resume it if an earlier crash left it down or drained.
  local st i
  for i in $(seq 1 300); do
    st=$(slurm_node_state)
    case "$st" in
      idle*|mixed*|allocated*|completing*) log "slurm: node $SLURM_HOST is $st"; return 0 ;;
      down*|drain*|fail*) scontrol update NodeName="$SLURM_HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  tail -n 20 "$SLURM_LOGDIR/slurmctld.log" "$SLURM_LOGDIR/slurmd.log" >&2 || true
  die "slurm node $SLURM_HOST not ready after 60s (state '$st')"
}

slurm_provision() {
  local changed=0
  slurm_install
  slurm_install_torque_wrappers
  slurm_start_munge
  slurm_write_conf && changed=1
  slurm_start_daemons "$changed"
}

slurm_smoke_test() {
  step "slurm: smoke test (sbatch --wait)"
  local out
  out=$(cd /tmp && timeout 120 sbatch --wait --parsable -J execd_smoke -o /dev/null -e /dev/null --wrap true 2>&1) ||
    die "Slurm smoke test: sbatch --wait failed: $(echo "$out" | tr '\n' ' ')"
  log "slurm: job $out finished with exit code 0"
}

torque_smoke_test() {
  step "slurm: smoke test of the Torque wrappers ($TORQUE_BIN/qsub, qstat)"
  local dir id st
  dir=$(mktemp -d -p "$PROV_TMP")
  printf '#!/bin/sh\necho torque-ok > %s/out.txt\n' "$dir" > "$dir/job.sh"
  id=$(cd "$dir" && timeout 60 "$TORQUE_BIN/qsub" -o "$dir/job.out" -e "$dir/job.err" "$dir/job.sh" 2>&1) ||
    die "Torque smoke test: $TORQUE_BIN/qsub failed: $id"
  for _ in $(seq 1 240); do
    st=$("$TORQUE_BIN/qstat" "$id" 2>&1 | awk -v id="$id" '$1 == id {print $5}') || true
    [ "$st" = C ] && break
    sleep 0.25
  done
  [ "$st" = C ] || die "Torque smoke test: job $id not complete after 60s (qstat state '$st')"
  grep -qx torque-ok "$dir/out.txt" 2>/dev/null ||
    die "Torque smoke test: job $id completed but did not write $dir/out.txt"
  log "slurm: Torque job $id ran, qstat state C"
}

slurm_stop() {
  step "slurm: stopping daemons"
  stop_by_pidfile "$SLURMD_PID" slurmd
  stop_by_pidfile "$SLURMCTLD_PID" slurmctld
  stop_by_pidfile "$MUNGED_PID" munged
}
