#!/usr/bin/env bash
# Start a single-node Slurm (slurmctld + slurmd, CPU only) on localhost for the tests of `kframes submit`.
#
#   tests/slurm/start_local_slurm.sh STATE_DIR      # prints the SLURM_CONF path on its last line
#   tests/slurm/stop_local_slurm.sh STATE_DIR
#
# Installs Debian's slurm-wlm daemons and munge with apt when they are missing and we are root. Everything
# else (config, spool, state, logs, pid files) lives under STATE_DIR, so it never touches /etc/slurm and a
# second copy can run beside it on other ports. Exits non-zero with one line on stderr saying why when Slurm
# cannot be started (the test turns that line into its skip reason).
set -euo pipefail

STATE_DIR=$(realpath -m "${1:?usage: start_local_slurm.sh STATE_DIR}")
CTLD_PORT=${KFRAMES_SLURMCTLD_PORT:-6917}
SLURMD_PORT=${KFRAMES_SLURMD_PORT:-6918}
die() { echo "start_local_slurm: $*" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || die "slurmctld/slurmd/munge are not installed and we are not root to apt-get them"
    command -v apt-get >/dev/null || die "slurm is not installed and there is no apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge >"$STATE_DIR.apt.log" 2>&1 \
        || die "apt-get install slurmctld slurmd slurm-client munge failed (see $STATE_DIR.apt.log)"
fi

mkdir -p "$STATE_DIR"/{ctld,spool,log,run,munge}
USER_NAME=$(id -un)

# munge: authentication between the Slurm commands and daemons. Our own socket, key and pid under STATE_DIR.
MUNGE_SOCKET="$STATE_DIR/munge/munge.socket"
if [ ! -S "$MUNGE_SOCKET" ] || ! munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
    command -v mungekey >/dev/null && [ -f "$STATE_DIR/munge/munge.key" ] || \
        { mungekey -c -f -k "$STATE_DIR/munge/munge.key" 2>/dev/null || \
          dd if=/dev/urandom of="$STATE_DIR/munge/munge.key" bs=1 count=1024 status=none; }
    chmod 0600 "$STATE_DIR/munge/munge.key"
    chmod 0700 "$STATE_DIR/munge"
    munged --force -S "$MUNGE_SOCKET" --key-file "$STATE_DIR/munge/munge.key" \
        --pid-file "$STATE_DIR/munge/munged.pid" --log-file "$STATE_DIR/log/munged.log" \
        --seed-file "$STATE_DIR/munge/munged.seed" \
        || die "munged did not start (see $STATE_DIR/log/munged.log)"
fi

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat >"$STATE_DIR/slurm.conf" <<CONF
# Written by tests/slurm/start_local_slurm.sh: one node (this machine), CPU only, no cgroups.
ClusterName=kframes-test
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$USER_NAME
SlurmdUser=$USER_NAME
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# start jobs whose dependency was just satisfied within seconds (the defaults wait up to a minute)
SchedulerParameters=sched_interval=2,bf_interval=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=600
JobRequeue=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
export SLURM_CONF="$STATE_DIR/slurm.conf"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running "$STATE_DIR/run/slurmctld.pid" || slurmctld -f "$SLURM_CONF" -i \
    || die "slurmctld did not start (see $STATE_DIR/log/slurmctld.log)"
running "$STATE_DIR/run/slurmd.pid" || slurmd -f "$SLURM_CONF" -N localhost \
    || die "slurmd did not start (see $STATE_DIR/log/slurmd.log)"

for _ in $(seq 1 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)
    case "$state" in
        idle*|mixed*|allocated*) echo "$SLURM_CONF"; exit 0 ;;
        down*|drain*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
die "the node did not become idle within 60 s (state: ${state:-none}; see $STATE_DIR/log/)"
