#!/usr/bin/env bash
# Start a real single-node SLURM cluster with fake GPUs, to prove the SLURM profile against
# slurmctld rather than a mock (shared/specs/local-slurm.md has the measurements behind each
# setting). Everything it writes lives under STATE_DIR, except one symlink: /etc/slurm/slurm.conf
# points at STATE_DIR/etc/slurm.conf, because the Snakemake jobstep drops SLURM_CONF before its
# srun inside each job, which then reads the default path. The daemons' PIDs go to
# STATE_DIR/pids, so that stop.sh ends exactly these processes (and removes the symlink).
#
#   tests/cluster/start.sh [STATE_DIR]       (default /tmp/synface-slurm)
#   tests/cluster/stop.sh [STATE_DIR]
#
# Exit status 3 means this machine cannot host the cluster (not root, not Debian, packages
# not installable, a real SLURM configuration or another test cluster in place), so callers
# can skip instead of fail; any other non-zero status is a real failure, with the daemons'
# logs under STATE_DIR/log (run stop.sh to end what did start).
set -euo pipefail

STATE_DIR=$(realpath -m "${1:-/tmp/synface-slurm}")
# The node poses as a small GPU node, bigger than this machine, so that the committed SLURM
# profile (8 CPUs and 64 GB per GPU job) is schedulable as it stands. Nothing is enforced
# (no cgroups): jobs use the threads their rules ask for. SlurmdParameters=config_overrides
# below keeps slurmd from draining a node that claims more than the hardware has.
FAKE_GPUS=${SYNFACE_FAKE_GPUS:-2}
FAKE_CPUS=${SYNFACE_FAKE_CPUS:-16}
FAKE_MEMORY_MB=${SYNFACE_FAKE_MEMORY_MB:-131072}
PARTITION=${SYNFACE_TEST_PARTITION:-synface}
CONF_DIR=$STATE_DIR/etc
MUNGE_DIR=$STATE_DIR/munge

unavailable() {
    echo "start.sh: no SLURM cluster here: $*" >&2
    exit 3
}

[[ $(id -u) -eq 0 ]] || unavailable "needs root (it installs packages and runs slurmd)"
{ [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null; } ||
    unavailable "needs Debian's slurm-wlm and munge packages (apt-get)"

if ! command -v slurmctld slurmd munged sbatch >/dev/null; then
    echo "installing slurm-wlm and munge" >&2
    # Package scripts do not start services here (policy-rc.d); the daemons start below.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        slurm-wlm munge; } >&2 || unavailable "apt-get install slurm-wlm munge failed"
fi

SYSTEM_CONF=/etc/slurm/slurm.conf
if [[ -f $STATE_DIR/pids ]]; then
    echo "start.sh: $STATE_DIR/pids exists: a cluster may be running; run stop.sh first" >&2
    exit 1
fi
if [[ -e $SYSTEM_CONF && ! -L $SYSTEM_CONF ]]; then
    unavailable "$SYSTEM_CONF is a real SLURM configuration; not replacing it"
fi
if [[ -L $SYSTEM_CONF && -f $(dirname "$(dirname "$(readlink "$SYSTEM_CONF")")")/pids ]]; then
    unavailable "another test cluster runs from $(readlink "$SYSTEM_CONF")"
fi

# First free pair of ports from 6817 (slurmctld) and 6818 (slurmd), so a second cluster on
# the same machine does not collide with this one.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
CTLD_PORT=6817
while port_in_use "$CTLD_PORT" || port_in_use $((CTLD_PORT + 1)); do
    CTLD_PORT=$((CTLD_PORT + 2))
done

# A fresh cluster each time, in a folder that is empty or was an earlier cluster's (marker).
MARKER=$STATE_DIR/.synface-test-cluster
if [[ -d $STATE_DIR && -n $(ls -A "$STATE_DIR") && ! -f $MARKER ]]; then
    echo "start.sh: $STATE_DIR is neither empty nor an earlier test cluster's folder" >&2
    exit 1
fi
rm -rf "${STATE_DIR:?}"/{etc,munge,state,spool,log,dev}
mkdir -p "$CONF_DIR" "$MUNGE_DIR" "$STATE_DIR"/{state,spool,log,dev}
touch "$MARKER"

# munged refuses a key that others can read, and needs its socket's folder to be searchable.
dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1 count=1024 status=none
chmod 755 "$MUNGE_DIR"
chmod 400 "$MUNGE_DIR/munge.key"

# Fake GPUs must be character devices: Count= without File=, or regular files, make the node
# INVAL or give jobs an empty CUDA_VISIBLE_DEVICES (specs/local-slurm.md).
GRES_FILES=()
for ((i = 0; i < FAKE_GPUS; i++)); do
    mknod "$STATE_DIR/dev/fakegpu$i" c 240 "$i" ||
        unavailable "cannot create device nodes under $STATE_DIR/dev for the fake GPUs"
    GRES_FILES+=("$STATE_DIR/dev/fakegpu$i")
done

# slurmd finds its node by the short host name; slurmctld reaches it on the loopback.
NODE_NAME=$(hostname -s)

cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by tests/cluster/start.sh; see shared/specs/local-slurm.md.
ClusterName=synface
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes: the tests' squeue status checks need
# MinJobAge >= 3 x slurm-init-seconds-before-status-checks.
MinJobAge=300
KillWait=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it every job gets the whole node's memory and jobs queue behind each other.
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
SlurmdParameters=config_overrides
NodeName=$NODE_NAME NodeAddr=127.0.0.1 CPUs=$FAKE_CPUS RealMemory=$FAKE_MEMORY_MB Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
printf 'Name=gpu File=%s\n' "${GRES_FILES[@]}" >"$CONF_DIR/gres.conf"
export SLURM_CONF=$CONF_DIR/slurm.conf
mkdir -p "$(dirname "$SYSTEM_CONF")"
ln -sfn "$SLURM_CONF" "$SYSTEM_CONF"

record() { echo "$1 $2" >>"$STATE_DIR/pids"; }
# As root (--force), like the other daemons: STATE_DIR may sit below a folder only root can
# enter (pytest's tmp_path does), which user munge could not reach.
setsid munged --foreground --force --socket="$MUNGE_DIR/munge.socket" \
    --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_DIR/munged.pid" \
    --seed-file="$MUNGE_DIR/munged.seed" --log-file="$MUNGE_DIR/munged.log" \
    </dev/null >>"$STATE_DIR/log/munged.out" 2>&1 &
record munged $!
for _ in $(seq 50); do [[ -S $MUNGE_DIR/munge.socket ]] && break; sleep 0.1; done
if [[ ! -S $MUNGE_DIR/munge.socket ]]; then
    echo "start.sh: munged did not start:" >&2 && tail -n 5 "$STATE_DIR/log/munged.out" >&2
    exit 1
fi
setsid slurmctld -D -f "$SLURM_CONF" </dev/null >>"$STATE_DIR/log/slurmctld.out" 2>&1 &
record slurmctld $!
setsid slurmd -D -f "$SLURM_CONF" </dev/null >>"$STATE_DIR/log/slurmd.out" 2>&1 &
record slurmd $!

SECONDS=0
while ((SECONDS < 60)); do
    state=$(timeout 5 sinfo -h -n "$NODE_NAME" -o %T 2>/dev/null || true)
    case $state in
        idle) echo "SLURM_CONF=$SLURM_CONF" && exit 0 ;;
        # A node left drained or INVAL by an earlier run of the same name comes back this way.
        *drain* | inval) scontrol update nodename="$NODE_NAME" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "start.sh: node $NODE_NAME not idle after $SECONDS s (state '${state:-unknown}'):" >&2
tail -n 20 "$STATE_DIR"/log/*.log "$STATE_DIR"/log/*.out >&2 || true
echo "start.sh: tests/cluster/stop.sh $STATE_DIR ends the daemons it started" >&2
exit 1
