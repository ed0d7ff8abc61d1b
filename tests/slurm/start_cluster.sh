#!/bin/bash
# Single-node SLURM "cluster" from the Debian packages (slurm-wlm, munge), no systemd.
# Recipe: /work/shared/CLUSTER_NOTES.md sections 1-4 and 7. Idempotent: a running munged /
# slurmctld / slurmd is reused (the config is rewritten only when it changed). Run as root.
#   partitions: cpu (Default=YES) and gpu on the one node `localhost`
#   WITH_GPU=1 (default): 2 fake GPUs (gres on /dev/null-like char devices), so the profile's
#   `gpu: 1` request of train/embed is schedulable on a GPU-less machine (torch still runs on CPU).
# Prints "slurm ready (<state>)" and exits 0 once the node is idle.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "start_cluster.sh: needs root" >&2; exit 2; }
WITH_GPU=${WITH_GPU:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
# --- munge
[ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; }
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive /run/munge/munged.pid || su -s /bin/sh munge -c /usr/sbin/munged
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null
# --- slurm.conf (+ gres.conf)
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm /run/slurm
install -d /var/spool/slurmd
if [ "$WITH_GPU" = 1 ]; then
  for i in 0 1; do [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done
  echo "NodeName=localhost Name=gpu File=/dev/fakegpu[0-1]" > /etc/slurm/gres.conf
fi
new=$(WITH_GPU=$WITH_GPU "$HERE/slurm_conf.sh")
changed=0
if [ ! -f /etc/slurm/slurm.conf ] || [ "$new" != "$(cat /etc/slurm/slurm.conf)" ]; then
  printf '%s\n' "$new" > /etc/slurm/slurm.conf; changed=1
fi
# --- daemons
if [ "$changed" = 1 ] && alive /run/slurm/slurmctld.pid; then
  echo "slurm.conf changed: restarting the daemons" >&2
  "$HERE/stop_cluster.sh" --keep-munge
fi
alive /run/slurm/slurmctld.pid || slurmctld
alive /run/slurm/slurmd.pid || slurmd
for _ in $(seq 60); do
  st=$(sinfo -h -n localhost -o %t 2>/dev/null | head -1 || true)
  case "$st" in
    idle|mix|alloc) echo "slurm ready ($st)"; exit 0;;
    drain*|inval*) scontrol update nodename=localhost state=resume || true;;
  esac
  sleep 0.5
done
echo "slurm did not become ready" >&2; sinfo -N -o '%N %t %E' >&2; exit 1
