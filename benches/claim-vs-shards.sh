#!/usr/bin/env bash
# Static shards against --claim, in the same run: a cohort of 12 generated slides (one
# 50,000², eleven 10,000²) analysed by 2 workers started together, first as `--shard 1/2` and
# `--shard 2/2`, then as two `--claim` workers. Prints each way's wall time, each worker's
# finishing time and the straggler gap (last worker's finish minus the first's), and the
# ratio of wall times. Without Slurm each worker is a process on its own CPUs (taskset and
# SLURM_CPUS_PER_TASK, as an array task has); with SLURM=1 the workers are the tasks of
# `sbatch --array=1-WORKERS docs/slurm-array.sbatch` on a one-node Slurm cluster started for the
# run (tests/slurm-cluster.sh: munged, slurmctld, slurmd as plain processes; each task bound to
# its CPUs by task/affinity), a worker's finishing time is its log's last write, and the wall
# time runs from submission to the last task's end.
#
#   bash benches/claim-vs-shards.sh        # BIG=50000 SMALL=10000 COUNT=12 WORKERS=2 PIN=1 SLURM=0
#
# Needs: Rust and the shared test data (the two TCGA regions the slides are made from); with
# SLURM=1, root and Debian's slurm-wlm and munge.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tessera-claim}
BIG=${BIG:-50000} SMALL=${SMALL:-10000} COUNT=${COUNT:-12} WORKERS=${WORKERS:-2}
if [ -n "${TESSERA:-}" ]; then T=$TESSERA; else cargo build --release --quiet; T=target/release/tessera; fi
# Absolute: the Slurm tasks start in another folder.
T=$(realpath "$T")
DATA=${TESSERA_TESTDATA:-../shared/testdata}/images/tcga-regions
SRC=(--source "$DATA/TCGA-HE-7130-01Z-00-DX1.png" --source "$DATA/target_image.png")
mkdir -p "$B/cohort"
# Named so that the big slide sorts first: static shard 1 holds it and five small ones.
[ -f "$B/cohort/s00-big.svs" ] || $T generate "$B/cohort/s00-big.svs" --width "$BIG" "${SRC[@]}" >/dev/null
for k in $(seq 1 $((COUNT - 1))); do
  f=$(printf '%s/cohort/s%02d.svs' "$B" "$k")
  [ -f "$f" ] || $T generate "$f" --width "$SMALL" "${SRC[@]}" >/dev/null
done
echo "machine: $(nproc) cores; $COUNT slides (one ${BIG}², $((COUNT - 1)) of ${SMALL}²), $WORKERS workers" \
  "of $(( $(nproc) / WORKERS > 0 ? $(nproc) / WORKERS : 1 )) CPU(s) each" >&2

# Each worker gets its own share of the cores (taskset), as a scheduler's tasks do: a worker
# that runs out of slides leaves its cores idle rather than lending them to the other.
# PIN=0 lets the workers share every core instead.
per=$(( $(nproc) / WORKERS )); [ "$per" -ge 1 ] || per=1
pin() { # worker index -> "taskset -c FIRST-LAST" (nothing when PIN=0 or no taskset)
  if [ "${PIN:-1}" = 0 ] || ! command -v taskset >/dev/null; then return; fi
  local first=$(( ($1 * per) % $(nproc) ))
  echo "taskset -c $first-$(( first + per - 1 ))"
}

if [ "${SLURM:-0}" = 1 ]; then
  # The cluster's own fresh folder (its daemons run as root from what is written there).
  SLURM_DIR=$(mktemp -d)/slurm
  bash tests/slurm-cluster.sh start "$SLURM_DIR" "$(nproc)" >/dev/null
  trap 'bash tests/slurm-cluster.sh stop "$SLURM_DIR"' EXIT
  export SLURM_CONF=$SLURM_DIR/slurm.conf TESSERA=$T
fi

# slurm_way NAME ARGS: one array of WORKERS tasks, each task given ARGS; prints "wall first last".
slurm_way() {
  local name=$1; shift
  local out=$B/out-$name start job script
  script=$(pwd)/docs/slurm-array.sbatch
  rm -rf "$out"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  local code=0
  job=$(cd "$B" && sbatch --parsable --wait --array=1-"$WORKERS" --cpus-per-task="$per" \
    --mem=1G "$script" "$B/cohort" "$out" --log-format json $1) || code=$?
  job=${job%%;*}
  # 0, or 2 when some slide failed; anything else (the job refused, tessera not run) is no timing.
  if [ -z "$job" ] || { [ "$code" != 0 ] && [ "$code" != 2 ]; }; then
    echo "sbatch failed (exit $code); the task logs:" >&2
    cat "$out"/logs/*.log >&2 2>/dev/null || true
    exit 1
  fi
  # A task's log gets a line as each slide ends: its last write is when the task finished.
  # (sbatch --wait itself returns up to tens of seconds late: it polls with growing intervals.)
  python3 - "$start" "$out"/logs/tessera-"$job"_*.log <<'EOF'
import os, sys
start = float(sys.argv[1])
ends = sorted(os.stat(f).st_mtime - start for f in sys.argv[2:])
print(f"{ends[-1]:.1f} {ends[0]:.1f} {ends[-1]:.1f}")
EOF
}

# way NAME ARGS-PER-WORKER...: starts the workers together; prints "wall first last".
way() {
  local name=$1; shift
  local out=$B/out-$name
  rm -rf "$out"
  local start pids=() i=0
  start=$(date +%s.%N)
  for args in "$@"; do
    # shellcheck disable=SC2086
    ( SLURM_CPUS_PER_TASK=$per $(pin $i) $T analyze "$B/cohort" --out "$out" -q $args >/dev/null 2>&1 || true
      date +%s.%N >"$B/$name-done-$i" ) &
    pids+=($!); i=$((i + 1))
  done
  wait "${pids[@]}"
  python3 - "$start" "$B"/"$name"-done-* <<'EOF'
import sys
start = float(sys.argv[1]); ends = sorted(float(open(f).read()) - start for f in sys.argv[2:])
print(f"{ends[-1]:.1f} {ends[0]:.1f} {ends[-1]:.1f}")
EOF
  rm -f "$B/$name"-done-*
}

shards=(); claims=()
for i in $(seq 1 "$WORKERS"); do shards+=("--shard $i/$WORKERS"); claims+=("--claim"); done
if [ "${SLURM:-0}" = 1 ]; then
  echo "== static shards (sbatch --array, --shard auto)" >&2
  read -r s_wall s_first s_last <<<"$(slurm_way shards "")"
  echo "== --claim (sbatch --array ... --claim)" >&2
  read -r c_wall c_first c_last <<<"$(slurm_way claim --claim)"
else
  echo "== static shards" >&2
  read -r s_wall s_first s_last <<<"$(way shards "${shards[@]}")"
  echo "== --claim" >&2
  read -r c_wall c_first c_last <<<"$(way claim "${claims[@]}")"
fi
echo
echo "| workers share by | wall s | first worker done s | last worker done s | straggler gap s |"
echo "|---|---|---|---|---|"
echo "| static shards | $s_wall | $s_first | $s_last | $(python3 -c "print(f'{$s_last - $s_first:.1f}')") |"
echo "| --claim | $c_wall | $c_first | $c_last | $(python3 -c "print(f'{$c_last - $c_first:.1f}')") |"
echo
python3 -c "print(f'claim / shards wall time: {$c_wall / $s_wall:.2f}')"
