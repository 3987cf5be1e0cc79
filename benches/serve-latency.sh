#!/usr/bin/env bash
# Deep Zoom tile latency of `tessera serve` under 16 concurrent clients (wrk) on 127.0.0.1:
# cached tiles (the server's tile cache warm), uncached ones (tile cache and the reader's
# decoded-tile cache both off, so every request reads, decodes, resizes and encodes), and
# uncached heatmap tiles (rendered from the probability grid and PNG-encoded each time).
#
#   bash benches/serve-latency.sh
#
# Needs: Rust, wrk (apt-get install wrk), ../shared/testdata. A 10,000² synthetic slide and its
# analysis go to $BENCH_DIR (default /tmp/tessera-bench); nothing is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tessera-bench}
DUR=${DURATION:-15s}
mkdir -p "$B"
cargo build --release --quiet
T=target/release/tessera
S=$B/synth-10k.svs
[ -f "$S" ] || $T generate "$S" --width 10000 \
  --source ../shared/testdata/images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png \
  --source ../shared/testdata/images/tcga-regions/target_image.png >/dev/null
[ -f "$B/serve-results/synth-10k.svs/result.json" ] || $T analyze "$S" --out "$B/serve-results" -q
ID=synth-10k.svs
LEVEL=$(python3 -c "import math; print(math.ceil(math.log2(10000)))")  # the full-resolution level
COLS=$(( (10000 + 253) / 254 ))

script=$(mktemp --suffix=.lua)
trap 'rm -f "$script"; kill $(jobs -p) 2>/dev/null || true' EXIT
cat >"$script" <<LUA
-- Walks N distinct full-resolution tiles (a fresh random start per thread).
local n, cols = tonumber(os.getenv("TILES")), $COLS
local kind = os.getenv("KIND")
local i = math.random(0, n - 1)
request = function()
  i = (i + 1) % n
  if kind == "overlay" then
    return wrk.format("GET", string.format("/overlay/${ID}_files/$LEVEL/%d_%d.png?cmap=viridis", 8 + i % 24, 8 + math.floor(i / 24)))
  end
  return wrk.format("GET", string.format("/slides/${ID}_files/$LEVEL/%d_%d.jpeg", 8 + i % 24, 8 + math.floor(i / 24)))
end
LUA

run() { # name, tiles, serve flags...
  local name=$1 tiles=$2; shift 2
  $T serve "$B/serve-results" --slides "$(dirname "$(readlink -f "$S")")" --bind 127.0.0.1:18181 "$@" >/dev/null &
  local pid=$!
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18181/api/slides && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:18181/slides/${ID}.dzi" || { echo "the slide is not served" >&2; exit 1; }
  if [ "$name" = cached ]; then # warm the tiles wrk will ask for
    for i in $(seq 0 $((tiles - 1))); do
      curl -sf -o /dev/null "http://127.0.0.1:18181/slides/${ID}_files/$LEVEL/$((8 + i % 24))_$((8 + i / 24)).jpeg"
    done
  fi
  echo "== $name: $tiles distinct 254² tiles (+1 px overlap), 16 connections, $DUR" >&2
  KIND=${KIND:-slide} TILES=$tiles wrk -t2 -c16 -d"$DUR" --latency -s "$script" http://127.0.0.1:18181/ | tee /dev/stderr \
    | awk -v n="$name" '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /Requests\/sec/{rps=$2} /Non-2xx/{bad=$NF}
        END{printf "| %s | %s | %s | %s | %s |\n", n, p50, p99, rps, (bad==""?0:bad)}'
  kill $pid; wait $pid 2>/dev/null || true
}

rows=$(run cached 256; run uncached 576 --tile-cache-mib 0 --cache-mib 0
       KIND=overlay run "heatmap uncached" 576 --tile-cache-mib 0)
echo
echo "| tiles | p50 | p99 | requests/s | non-2xx |"
echo "|---|---|---|---|---|"
echo "$rows"
