#!/bin/bash
# Print the slurm.conf of the local test cluster (CLUSTER_NOTES.md section 3) on stdout.
# CPUs/RealMemory come from `slurmd -C` (memory rounded down 10% so the node is not drained).
# MinJobAge stays at its default (300 s): the Snakemake plugin's squeue status mode needs
# finished jobs to stay visible, and the tests read them back with squeue/scontrol.
set -euo pipefail
WITH_GPU=${WITH_GPU:-1}
H=$(hostname -s)
NODE=$(slurmd -C | head -1)
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE"); MEM=$((MEM * 90 / 100))
GRES_NODE=""; GRES_TYPES=""
if [ "$WITH_GPU" = 1 ]; then GRES_NODE="Gres=gpu:2"; GRES_TYPES="GresTypes=gpu"; fi
cat <<CONF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
$GRES_TYPES
NodeName=localhost NodeHostname=$H NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost Default=NO MaxTime=INFINITE State=UP
CONF
