#!/usr/bin/env bash
# Side-by-side CPU benchmark: classify (release build), PyTorch eager, ONNX Runtime and
# OpenVINO, same shapes and thread count, one run, one machine. Prints a markdown table for
# the README, headed by the CPU model and the instruction set classify's kernels ran.
#   bench/run.sh PYTHON [THREADS] [ITERATIONS] [ROUNDS]
# PYTHON is a python with torch, torchvision, timm, onnx, onnxruntime and openvino (see
# reference.py).
#
# Shared machines drift by 10% and more within minutes, so the frameworks are timed back to
# back for each case, and the whole sequence is repeated ROUNDS times (default 3): the table
# shows each framework's median images/s over the rounds, and the largest peak RSS. Every
# measurement is a fresh process, so its peak RSS is its own. On a CPU with AVX-512,
# classify is also timed with its AVX2 kernels forced (CLASSIFY_CPU_ISA=avx2), for
# information: the references still use AVX-512 there. The stock-candle column is timed
# once, in alternation with the fast path (`classify bench` without --no-stock).
# Environment: MODELS (architecture names; torchvision's for resnet/densenet as listed in
# reference.py, timm's otherwise), FRAMEWORKS (default "pytorch onnxruntime openvino"),
# STOCK=0 / AVX2=0 to skip those columns. The references run at the input size classify
# benched (the architecture's own, e.g. 260 for tf_efficientnet_lite2). CLASSIFY_BIN: a
# classify binary built elsewhere (a machine without cargo); default: build target/release.
# PAUSE (seconds, default 5): idle time before every measurement. The 2-vCPU cloud VMs here
# slow down under sustained load and recover when idle (Lite0 batch 1 back to back: 200,
# 165, 158, 154, 147, 148 images/s; with 8 s idle before each: 182, 144, 213, 209, 202,
# 173), and the references' imports and ONNX export gave them such a pause where classify,
# timed straight after them, had none; the pause starts every engine alike.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: bench/run.sh PYTHON [THREADS] [ITERATIONS] [ROUNDS]}
threads=${2:-$(nproc)}
iters=${3:-10}
rounds=${4:-3}
models=${MODELS:-resnet18 resnet50 densenet121 tf_efficientnet_lite0}
frameworks=${FRAMEWORKS:-pytorch onnxruntime openvino}
# STOCK=0 skips the stock-candle column, AVX2=0 the AVX2-forced one (both slow to measure).
stock=${STOCK:-1}
avx2=${AVX2:-1}
out=$(mktemp)
bin=${CLASSIFY_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin classify >&2
  bin=target/release/classify
fi
pause=${PAUSE:-5}
classify() {
  sleep "$pause"
  "$bin" bench --model "$1" --batch-size "$2" --iterations "$iters" \
    --threads "$threads" --device cpu --json "${@:3}"
}
isa=$("$bin" bench --model resnet18 --batch-size 1 --iterations 1 --warmup 0 \
  --threads "$threads" --device cpu --json --no-stock | "$py" -c 'import json,sys; print(json.load(sys.stdin)["isa"])')
for round in $(seq "$rounds"); do
  for model in $models; do
    for batch in 1 16; do
      echo "round $round: $model batch $batch" >&2
      classify "$model" "$batch" --no-stock | tee -a "$out" >"$out.last"
      # The references run at the input size classify benched (the architecture's own).
      size=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["input_size"])' "$out.last")
      if [ "$isa" = avx512 ] && [ "$avx2" = 1 ]; then
        CLASSIFY_CPU_ISA=avx2 classify "$model" "$batch" --no-stock |
          "$py" -c 'import json,sys; r=json.load(sys.stdin); r["framework"]="classify_avx2"; print(json.dumps(r))' >>"$out"
      fi
      for fw in $frameworks; do
        sleep "$pause"
        "$py" bench/reference.py --one "$fw" "$model" "$batch" --threads "$threads" \
          --iterations "$iters" --input-size "$size" >>"$out"
      done
    done
  done
done
for model in $models; do
  for batch in 1 16; do
    [ "$stock" = 1 ] || continue
    classify "$model" "$batch" | "$py" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"framework": "stock", **r["stock"], "model": r["model"], "batch_size": r["batch_size"]}))' >>"$out"
  done
done
"$py" - "$out" "$threads" "$rounds" "$isa" <<'PY'
import json, sys, platform, datetime, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    r.setdefault("framework", "classify")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
isa = sys.argv[4]
print(f"{datetime.date.today()}, {cpu}, classify kernels: {isa}, {sys.argv[2]} threads, median of {sys.argv[3]} rounds, images/s (peak RSS MiB)\n")
print(f"| model | batch | classify ({isa}) | classify, AVX2 forced | stock candle ops | PyTorch eager | ONNX Runtime | OpenVINO | classify / PyTorch | classify / ORT | classify / OpenVINO |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
key = lambda r: (r["model"], r["batch_size"])
for m, b in sorted({key(r) for r in rows}):
    runs = lambda f: [r for r in rows if key(r) == (m, b) and r["framework"] == f and "images_per_sec" in r]
    ips = lambda f: statistics.median(r["images_per_sec"] for r in runs(f)) if runs(f) else float("nan")
    rss = lambda f: max(r.get("peak_rss_mb") or 0 for r in runs(f)) if runs(f) else float("nan")
    cell = lambda f: f"{ips(f):.1f} ({rss(f):.0f})" if runs(f) else "n/a"
    plain = lambda f: f"{ips(f):.1f}" if runs(f) else "n/a"
    ratio = lambda f: f"{ips('classify') / ips(f):.2f}" if runs(f) else "n/a"
    print(f"| {m} | {b} | {cell('classify')} | {plain('classify_avx2')} | {plain('stock')} | {cell('pytorch')} | {cell('onnxruntime')} | {cell('openvino')} | {ratio('pytorch')} | {ratio('onnxruntime')} | {ratio('openvino')} |")
PY
