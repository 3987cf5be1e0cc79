#!/usr/bin/env bash
# Tessera on a real GPU: end-to-end `tessera analyze` with ResNet-50 (random weights) on CUDA
# (and TensorRT where its libraries are), fp32 and fp16, batch 64 and 128, with and without the
# wgpu preprocessing shader; the model alone on pre-decoded patches (`tessera bench
# inference`) and the ratio; the GPU's busy fraction sampled with nvidia-smi over the inference
# stage alone; where the inference stage's time went (result.json's inference_* timings); and
# the shader tests (GPU against the CPU twins) on the machine's own adapter.
#
#   bash benches/gpu-e2e.sh            # on a machine with an NVIDIA GPU (about 10 minutes)
#   QUICK=1 bash benches/gpu-e2e.sh    # 10,000² slide, batch 64 only: a smoke run
#
# Needs: Rust; pip install onnx numpy, and for the GPU rows the line in README.md
# ("GPU inference"): onnxruntime-gpu with its nvidia-* CUDA 13 / cuDNN 9 (/ TensorRT) wheels.
# Without an NVIDIA GPU the GPU rows say why they did not run; the CPU row still runs.
# fp16 on CUDA is a float16 model (models/random/build_random.py --fp16: half weights and
# activations, float32 input and output, as converted lab models are); on TensorRT it is --fp16.
#
# On a machine without Rust (a lent GPU machine), with what was built elsewhere:
#   TESSERA=path/to/tessera   the release binary (no cargo build)
#   SHADER_TESTS=path         the integration test executable (cargo test --release --no-run)
#   SOURCES=dir               the folder holding the two tcga-regions PNGs
#   SIZE=40000                the measured slide's side; BATCHES="64 128"; CPU=0 skips the CPU row
#   DEVICES="cuda tensorrt"   the GPU providers to try (one that cannot load is reported once)
#   PREPROCESS="off on"       the --gpu-preprocess modes of each row
#   ARCH=tiny                 a three-convolution net instead of ResNet-50: tries the script out
# Slides, models and engine caches go to $BENCH_DIR (default /tmp/tessera-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BENCH_DIR:-/tmp/tessera-bench}
mkdir -p "$B"
if [ -n "${TESSERA:-}" ]; then
  T=$TESSERA
else
  cargo build --release --quiet
  T=target/release/tessera
fi
DATA=${TESSERA_TESTDATA:-../shared/testdata}
SRC_DIR=${SOURCES:-$DATA/images/tcga-regions}
SRC=(--source "$SRC_DIR/TCGA-HE-7130-01Z-00-DX1.png" --source "$SRC_DIR/target_image.png")
if [ -n "${QUICK:-}" ]; then SIZE=10000; BATCHES=${BATCHES:-64}; else SIZE=${SIZE:-50000}; BATCHES=${BATCHES:-64 128}; fi
for w in 10000 "$SIZE"; do
  [ -f "$B/synth-$((w / 1000))k.svs" ] || $T generate "$B/synth-$((w / 1000))k.svs" --width "$w" "${SRC[@]}" >/dev/null
done
SLIDE=$B/synth-$((SIZE / 1000))k.svs
CPU_SLIDE=$B/synth-10k.svs # ResNet-50 on a CPU: ~1,000 patches are enough for a rate
ARCH=${ARCH:-resnet50} # ARCH=tiny tries the script out in seconds
M=$B/models/$ARCH
M16=$B/models/$ARCH-fp16
[ -f "$M/model.onnx" ] || python3 models/random/build_random.py "$ARCH" "$M" >/dev/null
[ -f "$M16/model.onnx" ] || python3 models/random/build_random.py "$ARCH" "$M16" --fp16 >/dev/null

have_gpu=""
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && have_gpu=1
echo "machine: $(nproc) cores; $(nvidia-smi -L 2>/dev/null | head -1 || echo 'no NVIDIA GPU')" >&2

echo "== shaders against their CPU twins on this machine's adapter" >&2
if [ -n "${SHADER_TESTS:-}" ]; then
  shader=$("$SHADER_TESTS" gpu:: --nocapture 2>&1 || true)
else
  shader=$(cargo test --release --quiet --test integration gpu:: -- --nocapture 2>&1 || true)
fi
echo "$shader" | grep -E 'adapter:|max \||test result|SKIPPED|panicked' >&2 || true

rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |' "$@")"); }

# alone MODEL DEVICE BATCH: patches/s of the model alone on pre-decoded patches of $SLIDE.
alone() {
  local out
  if ! out=$($T bench inference "$SLIDE" --model "$1" --inference ort --device "$2" \
    --batch-size "$3" --batches 24 --repeats 3 2>&1); then
    echo "not run: …$(echo "$out" | tail -1 | tail -c 150)"
    return
  fi
  echo "$out" | sed -n 's/^pure inference: \([0-9.]*\) patches.*/\1/p' | tail -1
}

# run NAME SLIDE ARGS...: one analysis, nvidia-smi sampling utilisation every 100 ms; the busy
# fraction is taken over the inference stage alone (its start and length from result.json).
run() {
  local name=$1 slide=$2; shift 2
  local out=$B/o-gpu/$name log=$B/o-gpu/$name.util
  rm -rf "$out"; mkdir -p "$B/o-gpu"
  local smi=""
  if [ -n "$have_gpu" ]; then
    # GPU 0 only (the rows run on cuda:0 / tensorrt:0).
    nvidia-smi --id=0 --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits \
      -lms 100 >"$log" 2>/dev/null &
    smi=$!
  fi
  local err=0 began
  began=$(date +%s.%N)
  $T analyze "$slide" --out "$out" --inference ort -q "$@" 2>"$out.err" || err=$?
  [ -n "$smi" ] && kill "$smi" 2>/dev/null && wait "$smi" 2>/dev/null || true
  if [ $err -ne 0 ]; then
    # The reason is at the end of the error line (after the library's path).
    echo "not run (exit $err): …$(grep -m1 -v '^\s*$' "$out.err" | tail -c 150)"
    return
  fi
  python3 - "$out/$(basename "$slide")/result.json" "$log" "$began" <<'EOF'
import datetime, json, os, sys
d = json.load(open(sys.argv[1])); t = d["timings_s"]
start = float(sys.argv[3]) + sum(t.get(k, 0) for k in ("open_and_load_s", "tissue_s", "qc_s", "qc_model_s"))
end = start + t["inference_s"]
busy = "n/a"
if os.path.exists(sys.argv[2]):
    v = []
    for line in open(sys.argv[2]):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[1].isdigit():  # "[N/A]" under MIG
            continue
        at = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        if start <= at <= end:
            v.append(float(parts[1]))
    busy = f"{sum(v) / len(v):.0f} % ({len(v)} samples)" if v else "n/a"
n = d["patches_analysed"]
f = lambda k: t.get(k, 0.0)
print(f"{n / t['inference_s']:.0f}|{busy}|{d['inference']['device']}: inference {t['inference_s']:.1f} s "
      f"of {t['total_s']:.1f} s, {n} patches; thread-seconds: read+decode+resize {f('inference_read_s'):.1f} "
      f"(reader waiting {f('inference_reader_waiting_s'):.1f}), workers waiting {f('inference_workers_waiting_s'):.1f}, "
      f"pack {f('inference_pack_s'):.1f}, model {f('inference_model_s'):.1f}")
EOF
}

# add DEVICE PRECISION BATCH PREPROCESS ALONE RESULT
add() {
  local res=$6 alone=$5
  if [[ $res == not\ run* ]]; then row "$1" "$2" "$3" "$4" "$res" "$alone" "" "" ""; return; fi
  IFS='|' read -r rate busy note <<<"$res"
  local ratio=""
  [[ $alone =~ ^[0-9.]+$ ]] && ratio=$(python3 -c "print(f'{$rate / $alone:.2f}')")
  row "$1" "$2" "$3" "$4" "**$rate**" "$alone" "$ratio" "$busy" "$note"
  echo "   $rate patches/s end to end; alone $alone; busy $busy; $note" >&2
}

if [ "${CPU:-1}" != 0 ]; then
  echo "== CPU" >&2
  add cpu fp32 64 off "$(alone "$M" cpu 64)" "$(run cpu-64 "$CPU_SLIDE" --model "$M" --device cpu --batch-size 64 --gpu-preprocess off)"
fi
for dev in ${DEVICES:-cuda tensorrt}; do
  # One quick try on the small slide: a provider that cannot load is reported once.
  probe=$(run "$dev-probe" "$CPU_SLIDE" --model "$M" --device "$dev" --batch-size 64 --gpu-preprocess off)
  if [[ $probe == not\ run* ]]; then
    echo "== $dev: $probe" >&2
    row "$dev" "" "" "" "$probe" "" "" "" ""
    continue
  fi
  for b in $BATCHES; do
    for fp in fp32 fp16; do
      model=$M; f=()
      if [ $fp = fp16 ]; then
        if [ "$dev" = cuda ]; then model=$M16; else f=(--fp16); fi
      fi
      extra=(--model "$model" --device "$dev" --batch-size "$b" ${f[@]+"${f[@]}"})
      if [ "$dev" = tensorrt ]; then
        # Build TensorRT's engines (full and last, partial batch) into the cache on the
        # measured slide itself, so that no measured run builds one.
        extra+=(--trt-cache "$B/trt-cache")
        echo "== TensorRT $fp batch $b: engine build (not measured)" >&2
        run "trt-warm-$fp-$b" "$SLIDE" "${extra[@]}" >/dev/null
      fi
      echo "== $dev $fp batch $b: the model alone" >&2
      a=$(alone "$model" "$dev" "$b")
      for pre in ${PREPROCESS:-off on}; do
        echo "== $dev $fp batch $b preprocess $pre" >&2
        add "$dev" "$fp" "$b" "$pre" "$a" "$(run "$dev-$fp-$b-$pre" "$SLIDE" "${extra[@]}" --gpu-preprocess "$pre")"
      done
    done
  done
  # More of everything: four sessions and every core decoding.
  b=${BATCHES##* }
  model=$M16; [ "$dev" = cuda ] || model=$M
  echo "== $dev fp16 batch $b, 4 workers, $(nproc) decode threads" >&2
  add "$dev" fp16 "$b" "off, 4 workers, $(nproc) decode threads" "" \
    "$(run "$dev-fp16-$b-w4" "$SLIDE" --model "$model" --device "$dev" --batch-size "$b" --gpu-preprocess off --workers 4 --decode-threads "$(nproc)")"
done

echo
echo "slide: $(basename "$SLIDE") (CPU row: $(basename "$CPU_SLIDE")); model: $ARCH, random weights, 224²"
echo
echo "| device | precision | batch | GPU preprocess | end to end patches/s | model alone patches/s | ratio | GPU busy (inference stage) | where the time goes |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
