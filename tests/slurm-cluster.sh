#!/usr/bin/env bash
# A single-node Slurm cluster for the tests, as plain processes (no systemd, nothing under /etc):
# munged, slurmctld and slurmd from Debian's `munge` and `slurm-wlm`, everything they write
# (key, sockets, state, spool, logs, PID files) under one folder.
#
#   tests/slurm-cluster.sh start DIR CPUS   # prints SLURM_CONF=DIR/slurm.conf once the node is idle
#   tests/slurm-cluster.sh stop DIR         # stops every daemon it started, by the PIDs it recorded
#
# The node declares CPUS processors whatever the machine has (config_overrides), so that three
# one-CPU array tasks can run at once on a two-core CI machine; when CPUS is no more than the
# machine has, each task is bound to the CPUs it was given (task/affinity), as on a real cluster,
# and otherwise shares them all (task/none). Run as root (slurmd starts jobs
# as their submitting user); exits 2 with a reason when something is missing or does not start.
set -euo pipefail

cmd=${1:?usage: slurm-cluster.sh start DIR CPUS | stop DIR}
DIR=${2:?usage: slurm-cluster.sh start DIR CPUS | stop DIR}

stop() {
    local pid
    # Jobs first (their slurmstepd and tessera outlive slurmd), while slurmctld still answers.
    if [ -f "$DIR/slurm.conf" ] && [ -f "$DIR/slurmctld.pid" ]; then
        SLURM_CONF=$DIR/slurm.conf scancel --quiet --full --signal=KILL --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(SLURM_CONF=$DIR/slurm.conf squeue -h 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    for name in slurmd slurmctld munged; do
        [ -f "$DIR/$name.pid" ] || continue
        pid=$(cat "$DIR/$name.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$DIR/$name.pid"
    done
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 64; }
CPUS=${3:?usage: slurm-cluster.sh start DIR CPUS}

fail() { echo "slurm-cluster: $*" >&2; stop; exit 2; }
for b in munged mungekey slurmctld slurmd sinfo python3; do
    command -v "$b" >/dev/null || PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null \
        || fail "$b not found (apt-get install munge slurm-wlm)"
done
export PATH=$PATH:/usr/sbin:/sbin
[ "$(id -u)" = 0 ] || fail "slurmd must run as root to start jobs"

# The daemons run as root from what is written here: a folder someone else made is refused.
if [ -e "$DIR" ] && { [ ! -d "$DIR" ] || [ ! -O "$DIR" ]; }; then
    fail "$DIR exists and is not a folder of this user's"
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
chmod 700 "$DIR"
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
chmod 700 "$DIR/munge"

# A free TCP port from the kernel (bound, read, released).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# munged: its own key and socket, in the foreground under our PID.
mungekey --create --keyfile="$DIR/munge/munge.key" --force 2>/dev/null \
    || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
munged --foreground --force --socket="$DIR/munge/munge.sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pidfile" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed" >"$DIR/munged.out" 2>&1 &
echo $! >"$DIR/munged.pid"
for _ in $(seq 50); do [ -S "$DIR/munge/munge.sock" ] && break; sleep 0.1; done
[ -S "$DIR/munge/munge.sock" ] || fail "munged did not start: $(cat "$DIR/munged.out" "$DIR/munge/munged.log" 2>/dev/null)"

HOST=$(hostname -s)
TASK=task/none
[ "$CPUS" -le "$(nproc --all)" ] && TASK=task/affinity
MEM=$(awk '/MemTotal/ { print int($2 / 1024 / 2) }' /proc/meminfo)
cat >"$DIR/slurm.conf" <<EOF
ClusterName=tessera-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.sock
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pidfile
SlurmdPidFile=$DIR/slurmd.pidfile
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=$TASK
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$DIR/slurm.conf

slurmctld -D -i -f "$SLURM_CONF" >"$DIR/slurmctld.out" 2>&1 &
echo $! >"$DIR/slurmctld.pid"
slurmd -D -f "$SLURM_CONF" >"$DIR/slurmd.out" 2>&1 &
echo $! >"$DIR/slurmd.pid"

# Ready once the node is idle (slurmd registered with slurmctld).
for _ in $(seq 300); do
    state=$(sinfo -h -N -o %t 2>/dev/null || true)
    [ "$state" = idle ] && { echo "SLURM_CONF=$SLURM_CONF"; exit 0; }
    kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null || fail "slurmctld exited: $(tail -5 "$DIR/slurmctld.log" "$DIR/slurmctld.out" 2>/dev/null)"
    kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null || fail "slurmd exited: $(tail -5 "$DIR/slurmd.log" "$DIR/slurmd.out" 2>/dev/null)"
    sleep 0.2
done
fail "the node did not become idle in 60 s (state: ${state:-none}): $(tail -5 "$DIR/slurmctld.log" "$DIR/slurmd.log" 2>/dev/null)"
