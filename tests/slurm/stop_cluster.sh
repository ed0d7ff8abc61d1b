#!/bin/bash
# Stop the local SLURM (+ munge) daemons by PID (CLUSTER_NOTES.md section 7); never pkill.
# Cancels leftover jobs first. --keep-munge: leave munged running (used on a config change).
[ "$(id -u)" = 0 ] || { echo "stop_cluster.sh: needs root" >&2; exit 2; }
command -v scancel >/dev/null && [ -f /run/slurm/slurmctld.pid ] && scancel --user="$(id -un)" 2>/dev/null || true
stop() {  # $1 = pidfile
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "pid $pid did not stop, sending KILL" >&2; kill -KILL "$pid" 2>/dev/null || true
}
stop /run/slurm/slurmd.pid
stop /run/slurm/slurmctld.pid
[ "${1:-}" = --keep-munge ] || stop /run/munge/munged.pid
echo "slurm stopped"
