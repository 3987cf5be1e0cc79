#!/usr/bin/env bash
# A class of 30 trainees on the teaching viewer at once (issue 25, item 5): 30 accounts, each
# logged in with its own session; wrk drives two loads at the same time against one
# `tessera serve` in accounts mode on 127.0.0.1:
#   - tiles: 30 connections, one per trainee, each request a Deep Zoom tile of a random
#     position at one of the four most detailed levels (their session cookie on each);
#   - answers: 5 connections posting quiz rounds (3 marks each, the trainee's own session and
#     CSRF token) to a case with an expert annotation: scored, then saved in SQLite.
# It prints p50/p99 latency and requests/s of each, and checks that every answer posted was
# stored under its account.
#
#   bash benches/class-load.sh
#
# Needs: Rust, wrk (apt-get install wrk), curl, python3, ../shared/testdata. The slide and its
# analysis go to $BENCH_DIR (default /tmp/tessera-bench); nothing is committed. The model has
# random weights (speed only).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tessera-bench}
DUR=${DURATION:-20s}
PORT=${PORT:-18182}
mkdir -p "$B"
cargo build --release --quiet
T=target/release/tessera
S=$B/synth-10k.svs
[ -f "$S" ] || $T generate "$S" --width 10000 \
  --source ../shared/testdata/images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png \
  --source ../shared/testdata/images/tcga-regions/target_image.png >/dev/null
R=$B/class-results
rm -rf "$R"
$T analyze "$S" --out "$R" -q
ID=synth-10k.svs
# An expert annotation: three squares, as a QuPath export.
python3 - "$R/$ID/expert.geojson" <<'PY'
import json, sys
sq = lambda x, y, s: {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
                      "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]}}
json.dump({"type": "FeatureCollection", "features": [sq(2000, 2000, 1500), sq(6000, 3000, 800), sq(4000, 7000, 2000)]}, open(sys.argv[1], "w"))
PY
N=30
for i in $(seq 1 $N); do
  echo "trainee password $i" | $T users "$R" add "trainee$i" --role trainee >/dev/null
done

work=$(mktemp -d)
pid=
trap 'rm -rf "$work"; [ -z "$pid" ] || kill $pid 2>/dev/null || true' EXIT
read -r W H < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["slide"]["dimensions"]; print(d["width"], d["height"])' "$R/$ID/result.json")
TOP=$(python3 -c "import math; print(math.ceil(math.log2(max($W, $H))))")

cat >"$work/common.lua" <<LUA
dofile("$work/sessions.lua")
local counter = 0
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
function init(args) math.randomseed(tid * 7919 + os.time()); k = tid end
function next_session() k = k % #sessions + 1; return sessions[k] end
LUA
cat >"$work/tiles.lua" <<LUA
dofile("$work/common.lua")
request = function()
  local s = next_session()
  local level = $TOP - math.random(0, 3)
  local scale = 2 ^ ($TOP - level)
  local cols, rows = math.ceil($W / scale / 254), math.ceil($H / scale / 254)
  local path = string.format("/slides/${ID}_files/%d/%d_%d.jpeg", level, math.random(0, cols - 1), math.random(0, rows - 1))
  return wrk.format("GET", path, {["Cookie"] = s.cookie})
end
LUA
cat >"$work/answers.lua" <<LUA
dofile("$work/common.lua")
request = function()
  local s = next_session()
  local marks = {}
  for i = 1, 3 do marks[i] = string.format('{"x":%d,"y":%d}', math.random(0, $W - 1), math.random(0, $H - 1)) end
  local body = '{"class":"Tumor","marks":[' .. table.concat(marks, ",") .. ']}'
  return wrk.format("POST", "/api/quiz/$ID", {["Cookie"] = s.cookie, ["X-CSRF-Token"] = s.csrf, ["Content-Type"] = "application/json"}, body)
end
LUA

start() { # serve flags...: starts the viewer and logs every trainee in
  $T serve "$R" --slides "$(dirname "$(readlink -f "$S")")" --bind 127.0.0.1:$PORT "$@" 2>/dev/null >/dev/null &
  pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/login && break; sleep 0.1; done
  # Each trainee logs in: its cookie and CSRF token, as Lua tables.
  {
    echo "sessions = {"
    for i in $(seq 1 $N); do
      curl -s -c "$work/c$i" -H 'Content-Type: application/json' \
        -d "{\"name\":\"trainee$i\",\"password\":\"trainee password $i\"}" \
        http://127.0.0.1:$PORT/api/login >"$work/l$i"
      cookie=$(awk '$6=="tessera_session"{print $7}' "$work/c$i")
      csrf=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["csrf"])' "$work/l$i")
      echo "  {cookie = \"tessera_session=$cookie\", csrf = \"$csrf\"},"
    done
    echo "}"
  } >"$work/sessions.lua"
}

summary() { # name, wrk output file
  awk -v n="$1" '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /Requests\/sec/{rps=$2} / requests in /{total=$1} /Non-2xx/{bad=$NF}
    END{printf "| %s | %s | %s | %s | %s | %s |\n", n, total, p50, p99, rps, (bad==""?0:bad)}' "$2"
}
class() { # name, serve flags...
  local name=$1; shift
  start "$@"
  echo "== $name: $N trainees, tiles over 30 connections and answers over 5, together, $DUR" >&2
  wrk -t1 -c30 -d"$DUR" --latency -s "$work/tiles.lua" http://127.0.0.1:$PORT/ >"$work/tiles.out" &
  local t=$!
  wrk -t1 -c5 -d"$DUR" --latency -s "$work/answers.lua" http://127.0.0.1:$PORT/ >"$work/answers.out"
  wait $t
  cat "$work/tiles.out" "$work/answers.out" >&2
  kill $pid; wait $pid 2>/dev/null || true
  pid=
  summary "$name: tiles (30 trainees)" "$work/tiles.out"
  summary "$name: answers, scored and saved (5 at once)" "$work/answers.out"
}
rows=$(class "tile cache on (default)"; class "no tile caches" --tile-cache-mib 0 --cache-mib 0)
stored=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*), count(DISTINCT user_id) FROM answers WHERE user_id IS NOT NULL").fetchone())' "$R/.tessera/viewer.sqlite")
echo
echo "| run: load | requests | p50 | p99 | requests/s | non-2xx |"
echo "|---|---|---|---|---|---|"
echo "$rows"
echo
echo "answers stored (count, distinct accounts): $stored"
