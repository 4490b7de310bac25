#!/usr/bin/env bash
# A private single-node SLURM on localhost, for testing slurm/study.sbatch: munged, slurmctld and
# slurmd with their config, key, sockets, state and logs all under one folder; nothing in /etc is used.
#
#   slurm/local-cluster.sh start DIR   start it (stopping one left running in DIR first); prints the
#                                      line to eval: export SLURM_CONF=DIR/slurm.conf
#   slurm/local-cluster.sh stop DIR    stop its daemons (by the pids in DIR only)
#
# Needs the Debian packages slurm-wlm and munge (make test-slurm installs them). Runs as root (CI) or
# as any user: the daemons then run as that user.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
# Ports apart from a system SLURM's 6817/6818; HW3_SLURM_PORT picks others.
port=${HW3_SLURM_PORT:-16817}

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
  done
}

missing() {
  echo "$0: $1 not found: install the Debian packages slurm-wlm and munge (apt-get install slurm-wlm munge)" >&2
  exit 1
}

start() {
  local tool
  for tool in munged slurmctld slurmd sbatch scontrol; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing "$tool"
  done
  export PATH="$PATH:/usr/sbin"
  stop
  rm -rf "$dir/state" "$dir/spool" "$dir/munge"
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  chmod 0700 "$dir/munge"
  local user cpus
  user=$(id -un)
  cpus=$(nproc)
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$dir/munge/munge.key"
  # --force: munged refuses a socket folder under a world-writable /tmp, and root, without it.
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  cat > "$dir/slurm.conf" <<CONF
# Written by slurm/local-cluster.sh: a throw-away single-node cluster for tests.
ClusterName=hw3test
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=600
NodeName=localhost CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -c -f "$SLURM_CONF"
  slurmd -N localhost -f "$SLURM_CONF"
  local state=""
  for _ in $(seq 60); do
    state=$(scontrol show node localhost 2>/dev/null | sed -n 's/.*State=\([A-Z+_]*\).*/\1/p' | head -1)
    case "$state" in IDLE*|MIXED*|ALLOCATED*) echo "export SLURM_CONF=$SLURM_CONF"; return 0 ;; esac
    sleep 0.5
  done
  echo "$0: the node did not come up (state '${state:-none}'): see $dir/slurmctld.log and $dir/slurmd.log" >&2
  stop
  exit 1
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
