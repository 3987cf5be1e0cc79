#!/usr/bin/env bash
# Issue 7's proof on real hardware: end-to-end `tessera analyze` with ResNet-50 (random
# weights) on CPU, CUDA and TensorRT, fp32 and fp16, batch 64 and 128, with and without the
# wgpu preprocessing shader; GPU busy fraction sampled with nvidia-smi while each run lasts;
# and the shader tests (GPU against the CPU twins) on the machine's own adapter.
#
#   bash benches/gpu-e2e.sh            # on a machine with an NVIDIA GPU (about 10 minutes)
#   QUICK=1 bash benches/gpu-e2e.sh    # 10,000² slide, batch 64 only: a smoke run
#
# Needs: Rust; pip install onnx numpy, and for the GPU rows the line in README.md
# ("GPU inference"): onnxruntime-gpu with its nvidia-* CUDA 13 / cuDNN 9 / TensorRT wheels.
# Without an NVIDIA GPU the GPU rows say why they did not run; the CPU row still runs.
# Slides, models and engine caches go to $BENCH_DIR (default /tmp/tessera-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tessera-bench}
mkdir -p "$B"
cargo build --release --quiet
T=target/release/tessera
DATA=${TESSERA_TESTDATA:-../shared/testdata}
SRC=(--source "$DATA/images/tcga-regions/TCGA-HE-7130-01Z-00-DX1.png"
     --source "$DATA/images/tcga-regions/target_image.png")
if [ -n "${QUICK:-}" ]; then SIZES=(10000); BATCHES=(64); else SIZES=(10000 50000); BATCHES=(64 128); fi
for w in "${SIZES[@]}"; do
  [ -f "$B/synth-$((w / 1000))k.svs" ] || $T generate "$B/synth-$((w / 1000))k.svs" --width $w "${SRC[@]}" >/dev/null
done
SLIDE=$B/synth-$((${SIZES[-1]} / 1000))k.svs
CPU_SLIDE=$B/synth-10k.svs # ResNet-50 on a CPU: ~1,000 patches are enough for a rate
M=$B/models/resnet50
[ -f "$M/model.onnx" ] || python3 models/random/build_random.py resnet50 "$M" >/dev/null

have_gpu=""
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && have_gpu=1
echo "machine: $(nproc) cores; $(nvidia-smi -L 2>/dev/null | head -1 || echo 'no NVIDIA GPU')" >&2

echo "== shaders against their CPU twins on this machine's adapter" >&2
shader=$(cargo test --release --quiet --test integration gpu:: -- --nocapture 2>&1 || true)
echo "$shader" | grep -E 'adapter:|max \||test result' >&2 || true

rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s | %s | %s |' "$@")"); }

# run NAME SLIDE ARGS...: one analysis, with nvidia-smi sampling utilisation every 100 ms.
run() {
  local name=$1 slide=$2; shift 2
  local out=$B/o-gpu/$name log=$B/o-gpu/$name.util
  rm -rf "$out"; mkdir -p "$B/o-gpu"
  local smi=""
  if [ -n "$have_gpu" ]; then
    # GPU 0 only (the rows run on cuda:0 / tensorrt:0).
    nvidia-smi --id=0 --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 >"$log" 2>/dev/null &
    smi=$!
  fi
  local err=0
  $T analyze "$slide" --out "$out" --model "$M" --inference ort -q "$@" 2>"$out.err" || err=$?
  [ -n "$smi" ] && kill "$smi" 2>/dev/null && wait "$smi" 2>/dev/null || true
  if [ $err -ne 0 ]; then
    # The reason is at the end of the error line (after the library's path).
    echo "not run (exit $err): …$(grep -m1 -v '^\s*$' "$out.err" | tail -c 150)"
    return
  fi
  local r=$out/$(basename "$slide")/result.json
  local busy="n/a"
  if [ -s "$log" ]; then # numeric samples only ("[N/A]" under MIG)
    busy=$(python3 -c "import sys; v=[float(x) for x in open(sys.argv[1]) if x.strip().replace('.', '', 1).isdigit()]; print(f'{sum(v)/len(v):.0f} %' if v else 'n/a')" "$log")
  fi
  python3 - "$r" "$busy" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); t = d["timings_s"]
print(f"{d['patches_analysed']/t['inference_s']:.0f}|{sys.argv[2]}|{d['inference']['device']}|"
      f"inference {t['inference_s']:.1f} s of {t['total_s']:.1f} s; {d['patches_analysed']} patches; "
      f"GPU preprocessing: {d['parameters']['gpu_preprocess'] or 'off'}")
EOF
}

add() { # device precision batch preprocess result
  local res=$5
  if [[ $res == not\ run* ]]; then row "$1" "$2" "$3" "$4" "$res" "" ""; return; fi
  IFS='|' read -r rate busy dev note <<<"$res"
  row "$1" "$2" "$3" "$4" "**$rate**" "$busy" "$dev; $note"
}

echo "== CPU" >&2
add cpu fp32 64 off "$(run cpu-64 "$CPU_SLIDE" --device cpu --batch-size 64 --gpu-preprocess off)"
for b in "${BATCHES[@]}"; do
  for fp in fp32 fp16; do
    f=(); [ $fp = fp16 ] && f=(--fp16)
    # Build TensorRT's engines (full and last, partial batch) into the cache on the measured
    # slide itself, so that no measured run builds one.
    echo "== TensorRT $fp batch $b: engine build (not measured)" >&2
    run "trt-warm-$fp-$b" "$SLIDE" --device tensorrt --trt-cache "$B/trt-cache" ${f[@]+"${f[@]}"} --batch-size "$b" >/dev/null
  done
  for pre in off on; do
    echo "== CUDA batch $b preprocess $pre" >&2
    add cuda fp32 "$b" "$pre" "$(run "cuda-$b-$pre" "$SLIDE" --device cuda --batch-size "$b" --gpu-preprocess "$pre")"
    for fp in fp32 fp16; do
      f=(); [ $fp = fp16 ] && f=(--fp16)
      echo "== TensorRT $fp batch $b preprocess $pre" >&2
      add tensorrt "$fp" "$b" "$pre" "$(run "trt-$fp-$b-$pre" "$SLIDE" --device tensorrt --trt-cache "$B/trt-cache" ${f[@]+"${f[@]}"} --batch-size "$b" --gpu-preprocess "$pre")"
    done
  done
done

echo
echo "slide: $(basename "$SLIDE") (CPU row: $(basename "$CPU_SLIDE")); model: ResNet-50, random weights, 224²"
echo
echo "| device | precision | batch | GPU preprocess | patches/s | GPU busy | where the time goes |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
