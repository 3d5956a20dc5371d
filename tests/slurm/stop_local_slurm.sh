#!/usr/bin/env bash
# Stop the Slurm started by start_local_slurm.sh STATE_DIR (by the pid files it wrote; nothing else).
set -uo pipefail
STATE_DIR=$(realpath -m "${1:?usage: stop_local_slurm.sh STATE_DIR}")
for pidfile in "$STATE_DIR/run/slurmd.pid" "$STATE_DIR/run/slurmctld.pid" "$STATE_DIR/munge/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
done
exit 0
