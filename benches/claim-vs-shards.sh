#!/usr/bin/env bash
# Static shards against --claim, in the same run: a cohort of 12 generated slides (one
# 50,000², eleven 10,000²) analysed by 2 workers started together, first as `--shard 1/2` and
# `--shard 2/2`, then as two `--claim` workers. Prints each way's wall time, each worker's
# finishing time and the straggler gap (last worker's finish minus the first's), and the
# ratio of wall times. Slurm is not needed: a job array starts the same two commands, each
# task on its own CPUs (emulated with taskset and SLURM_CPUS_PER_TASK).
#
#   bash benches/claim-vs-shards.sh        # BIG=50000 SMALL=10000 COUNT=12 WORKERS=2 PIN=1
#
# Needs: Rust and the shared test data (the two TCGA regions the slides are made from).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tessera-claim}
BIG=${BIG:-50000} SMALL=${SMALL:-10000} COUNT=${COUNT:-12} WORKERS=${WORKERS:-2}
if [ -n "${TESSERA:-}" ]; then T=$TESSERA; else cargo build --release --quiet; T=target/release/tessera; fi
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
echo "== static shards" >&2
read -r s_wall s_first s_last <<<"$(way shards "${shards[@]}")"
echo "== --claim" >&2
read -r c_wall c_first c_last <<<"$(way claim "${claims[@]}")"
echo
echo "| workers share by | wall s | first worker done s | last worker done s | straggler gap s |"
echo "|---|---|---|---|---|"
echo "| static shards | $s_wall | $s_first | $s_last | $(python3 -c "print(f'{$s_last - $s_first:.1f}')") |"
echo "| --claim | $c_wall | $c_first | $c_last | $(python3 -c "print(f'{$c_last - $c_first:.1f}')") |"
echo
python3 -c "print(f'claim / shards wall time: {$c_wall / $s_wall:.2f}')"
