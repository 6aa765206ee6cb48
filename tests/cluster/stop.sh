#!/usr/bin/env bash
# Stop the cluster that start.sh started in STATE_DIR: cancel its jobs, end the daemons whose
# PIDs start.sh recorded, newest first, and remove its /etc/slurm/slurm.conf symlink. Nothing
# else is signalled, and a recorded PID that now belongs to another program is left alone.
#
#   tests/cluster/stop.sh [STATE_DIR]       (default /tmp/synface-slurm)
set -euo pipefail

STATE_DIR=$(realpath -m "${1:-/tmp/synface-slurm}")
PIDS=$STATE_DIR/pids
[[ -f $PIDS ]] || { echo "stop.sh: no $PIDS, nothing to stop" >&2 && exit 0; }
export SLURM_CONF=$STATE_DIR/etc/slurm.conf

# Jobs first, while slurmctld can still tell slurmd to end their steps.
mapfile -t jobs < <(squeue -h -o %A 2>/dev/null || true)
if ((${#jobs[@]})); then
    scancel "${jobs[@]}" 2>/dev/null || true
    for _ in $(seq 20); do
        [[ -z $(squeue -h -t running,completing -o %A 2>/dev/null) ]] && break
        sleep 0.5
    done
fi

ours() { [[ $(cat "/proc/$2/comm" 2>/dev/null) == "$1" ]]; }
tac "$PIDS" | while read -r name pid; do
    ours "$name" "$pid" || continue
    kill -TERM "$pid"
    for _ in $(seq 50); do ours "$name" "$pid" || break; sleep 0.2; done
    if ours "$name" "$pid"; then
        echo "stop.sh: $name ($pid) ignored SIGTERM for 10 s; killing it" >&2
        kill -KILL "$pid"
    fi
done
rm -f "$PIDS"
if [[ $(readlink /etc/slurm/slurm.conf) == "$SLURM_CONF" ]]; then
    rm /etc/slurm/slurm.conf
fi
