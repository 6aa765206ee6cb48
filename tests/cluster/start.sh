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
# Exit status 3 means this machine cannot host the cluster (not root, not Debian, or the
# packages cannot be installed), so callers can skip instead of fail; any other non-zero
# status is a real failure, with the daemons' logs under STATE_DIR/log.
set -euo pipefail

STATE_DIR=$(realpath -m "${1:-/tmp/synface-slurm}")
FAKE_GPUS=${SYNFACE_FAKE_GPUS:-2}
PARTITION=${SYNFACE_TEST_PARTITION:-synface}
CONF_DIR=$STATE_DIR/etc
MUNGE_DIR=$STATE_DIR/munge

unavailable() {
    echo "start.sh: no SLURM cluster here: $*" >&2
    exit 3
}

[[ $(id -u) -eq 0 ]] || unavailable "needs root (it installs packages and runs slurmd)"
[[ -f /etc/debian_version ]] && command -v apt-get >/dev/null ||
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
    echo "start.sh: another test cluster runs from $(readlink "$SYSTEM_CONF"); stop it first" >&2
    exit 1
fi

# First free pair of ports from 6817 (slurmctld) and 6818 (slurmd), so a second cluster on
# the same machine does not collide with this one.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
CTLD_PORT=6817
while port_in_use "$CTLD_PORT" || port_in_use $((CTLD_PORT + 1)); do
    CTLD_PORT=$((CTLD_PORT + 2))
done

rm -rf "$STATE_DIR"/{etc,munge,state,spool,log,dev}
mkdir -p "$CONF_DIR" "$MUNGE_DIR" "$STATE_DIR"/{state,spool,log,dev}

# munged runs as user munge, refuses a key that others can read, and needs its socket's
# folder to be searchable by everyone.
dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1 count=1024 status=none
chmod 755 "$MUNGE_DIR"
chmod 400 "$MUNGE_DIR/munge.key"
chown -R munge:munge "$MUNGE_DIR"

# Fake GPUs must be character devices: Count= without File=, or regular files, make the node
# INVAL or give jobs an empty CUDA_VISIBLE_DEVICES (specs/local-slurm.md).
GRES_FILES=()
for ((i = 0; i < FAKE_GPUS; i++)); do
    mknod "$STATE_DIR/dev/fakegpu$i" c 240 "$i"
    GRES_FILES+=("$STATE_DIR/dev/fakegpu$i")
done

# The node as slurmd sees it, with 85 % of its memory (the rest is the OS's).
read -r -a NODE < <(slurmd -C | head -n 1)
for i in "${!NODE[@]}"; do
    if [[ ${NODE[$i]} == RealMemory=* ]]; then
        NODE[$i]="RealMemory=$((${NODE[$i]#RealMemory=} * 85 / 100))"
    fi
done

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
# Finished jobs stay visible to squeue for 5 minutes: the profile's squeue status checks need
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
${NODE[*]} Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
printf 'Name=gpu File=%s\n' "${GRES_FILES[@]}" >"$CONF_DIR/gres.conf"
export SLURM_CONF=$CONF_DIR/slurm.conf
mkdir -p "$(dirname "$SYSTEM_CONF")"
ln -sfn "$SLURM_CONF" "$SYSTEM_CONF"

record() { echo "$1 $2" >>"$STATE_DIR/pids"; }
setsid runuser -u munge -- munged --foreground --socket="$MUNGE_DIR/munge.socket" \
    --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_DIR/munged.pid" \
    --seed-file="$MUNGE_DIR/munged.seed" --log-file="$MUNGE_DIR/munged.log" \
    </dev/null >>"$STATE_DIR/log/munged.out" 2>&1 &
for _ in $(seq 50); do [[ -s $MUNGE_DIR/munged.pid ]] && break; sleep 0.1; done
if [[ ! -s $MUNGE_DIR/munged.pid ]]; then
    echo "start.sh: munged did not start:" >&2 && tail -n 5 "$STATE_DIR/log/munged.out" >&2
    exit 1
fi
# runuser waits on munged and exits with it: munged's own PID is the one to stop.
record munged "$(cat "$MUNGE_DIR/munged.pid")"
setsid slurmctld -D -f "$SLURM_CONF" </dev/null >>"$STATE_DIR/log/slurmctld.out" 2>&1 &
record slurmctld $!
setsid slurmd -D -f "$SLURM_CONF" </dev/null >>"$STATE_DIR/log/slurmd.out" 2>&1 &
record slurmd $!

NODE_NAME=${NODE[0]#NodeName=}
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
exit 1
