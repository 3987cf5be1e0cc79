#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md on this machine and prints one table: the reader
# against OpenSlide, the engine against the model alone, Tessera against a WSInfer-style Python
# pipeline, peak memory on 10,000² and 100,000² slides, and thread scaling.
#
#   bash benches/run-all.sh            # everything (about 25 minutes on 2 cores)
#   QUICK=1 bash benches/run-all.sh    # smaller runs (a few minutes), for a smoke check
#
# Needs: Rust; pip install openslide-bin openslide-python onnxruntime onnx numpy.
# Generated slides and random-weight models go to $BENCH_DIR (default /tmp/tessera-bench);
# they are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tessera-bench}
mkdir -p "$B"
cargo build --release --quiet
T=target/release/tessera
SRC=(--source ../shared/testdata/images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png
     --source ../shared/testdata/images/tcga-regions/target_image.png)
for w in 10000 50000 100000; do
  [ -f "$B/synth-$((w / 1000))k.svs" ] || $T generate "$B/synth-$((w / 1000))k.svs" --width $w "${SRC[@]}" >/dev/null
done
[ -f "$B/models/resnet18/model.onnx" ] || python3 models/random/build_random.py resnet18 "$B/models/resnet18" >/dev/null
S50=$B/synth-50k.svs
if [ -n "${QUICK:-}" ]; then REGIONS=500; LIMIT=256; S_E2E=$B/synth-10k.svs; else REGIONS=2000; LIMIT=1024; S_E2E=$S50; fi

rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s |' "$1" "$2" "$3" "$4")"); }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

echo "== 1. reader: native vs OpenSlide on the 50,000² slide (random, tile-aligned, analysis order)" >&2
for mode in "random" "aligned" "walk"; do
  case $mode in
    random) args=(--regions $REGIONS); what="random 256² regions"; target="≥ 6×" ;;
    aligned) args=(--regions $REGIONS --aligned); what="tile-aligned 256² regions"; target="≥ 6×" ;;
    walk) args=(--regions $((REGIONS * 2)) --walk --side 224); what="224² patches in analyze's order"; target="(none)" ;;
  esac
  out=$($T bench read "$S50" --repeats 3 "${args[@]}")
  echo "$out" >&2
  while read -r t r; do
    row "reader, $what, $t thread(s)" "native / OpenSlide regions/s" "$target" "${r}×"
  done < <(echo "$out" | sed -n 's/^ratio native\/openslide at \([0-9]*\) thread(s): \([0-9.]*\)×.*/\1 \2/p')
done

echo "== 2. engine overhead: analyze vs the model alone (ResNet-18, random weights)" >&2
rm -rf "$B/o-e2e"
$T analyze "$S_E2E" --out "$B/o-e2e" --model "$B/models/resnet18" --inference ort -q
e2e=$(json "$B/o-e2e/$(basename "$S_E2E")/result.json" "d['patches_analysed']/d['timings_s']['inference_s']")
pure=$($T bench inference "$S_E2E" --model "$B/models/resnet18" --inference ort --batches 8 --repeats 3 \
       | sed -n 's/^pure inference: \([0-9.]*\) patches.*/\1/p')
row "engine overhead, ResNet-18 ($(basename "$S_E2E"))" "analyze patches/s ÷ pure inference" "≥ 0.95" \
    "$(python3 -c "print(f'{$e2e:.1f} / {$pure:.1f} = {$e2e/$pure:.3f}')")"

echo "== 3. against a WSInfer-style Python pipeline (same grid, model, batch, threads)" >&2
rm -rf "$B/o-def" "$B/o-def-os"
$T analyze "$S_E2E" --out "$B/o-def" --inference ort -q
$T analyze "$S_E2E" --out "$B/o-def-os" --inference ort -q --backend openslide
d=$B/o-def/$(basename "$S_E2E")
base=$(python3 benches/baseline/wsinfer_baseline.py "$S_E2E" "$d")
echo "$base" >&2
row "vs Python, default model" "Tessera ÷ baseline patches/s" "≥ 3×" "$(json /dev/stdin "f\"{d['tessera_patches_per_s']} / {d['baseline_patches_per_s']} = {d['ratio']}×\"" <<<"$base")"
same=$(python3 benches/baseline/wsinfer_baseline.py "$S_E2E" "$B/o-def-os/$(basename "$S_E2E")" --limit 2048)
row "probabilities, same pixels (Tessera on OpenSlide)" "max \\|Δp\\|" "≤ 1e-4" "$(json /dev/stdin "d['max_abs_prob_diff']" <<<"$same")"
row "probabilities, native reader" "max \\|Δp\\|" "(JPEG rounding)" "$(json /dev/stdin "d['max_abs_prob_diff']" <<<"$base")"
r18=$(python3 benches/baseline/wsinfer_baseline.py "$S_E2E" "$B/o-e2e/$(basename "$S_E2E")" --model "$B/models/resnet18" --limit $LIMIT)
echo "$r18" >&2
row "vs Python, ResNet-18 (first $LIMIT patches)" "Tessera ÷ baseline patches/s" "report" "$(json /dev/stdin "f\"{d['tessera_patches_per_s']} / {d['baseline_patches_per_s']} = {d['ratio']}×\"" <<<"$r18")"

echo "== 4. peak memory (default model, ONNX Runtime, default settings)" >&2
for s in 10k 100k; do
  [ -n "${QUICK:-}" ] && [ $s = 100k ] && continue
  rm -rf "$B/o-mem"
  /usr/bin/time -f "%M" -o "$B/rss-$s" $T analyze "$B/synth-$s.svs" --out "$B/o-mem" --inference ort -q
done
r10=$(( $(cat "$B/rss-10k") / 1024 ))
if [ -f "$B/rss-100k" ] && [ -z "${QUICK:-}" ]; then
  r100=$(( $(cat "$B/rss-100k") / 1024 ))
  row "peak RSS, 100,000² slide" "MiB" "≤ 512" "$r100"
  row "peak RSS, 100,000² vs 10,000²" "ratio" "≤ 1.10" "$(python3 -c "print(f'{$r100} / {$r10} = {$r100/$r10:.2f}')")"
fi
row "peak RSS, 10,000² slide" "MiB" "" "$r10"

echo "== 5. thread scaling (10,000² slide)" >&2
for model in default resnet18; do
  m=(); [ $model = resnet18 ] && m=(--model "$B/models/resnet18")
  for t in 1 2; do
    rm -rf "$B/o-sc"
    $T analyze "$B/synth-10k.svs" --out "$B/o-sc" --inference ort -q "${m[@]}" \
      --inference-threads $t --decode-threads $t
    v=$(json "$B/o-sc/synth-10k.svs/result.json" "round(d['patches_analysed']/d['timings_s']['inference_s'],1)")
    row "scaling, $model, $t thread(s)" "patches/s" "" "$v"
  done
done

echo
echo "| benchmark | measure | target | result |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
