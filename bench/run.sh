#!/usr/bin/env bash
# Side-by-side CPU benchmark: classify (release build), PyTorch eager, ONNX Runtime and
# OpenVINO, same shapes and thread count, one run, one machine. Prints a markdown table for
# the README, headed by the CPU model and the instruction set classify's kernels ran.
#   bench/run.sh PYTHON [THREADS] [ROUNDS]
# PYTHON is a python with torch, torchvision, timm, onnx, onnxruntime and openvino (see
# reference.py). bench/interleave.py does the timing: each reference engine is loaded once
# in its own process, then ROUNDS rounds (default 10) time every engine for a burst of about
# BURST seconds (default 2) one after the other, PAUSE seconds (default 1) idle before each;
# the ratios are medians of the per-round ratios, so that each compares engines measured
# seconds apart, in the same state of a shared machine. On a CPU with AVX-512, classify is
# also timed with its AVX2 kernels forced (CLASSIFY_CPU_ISA=avx2), and OpenVINO with oneDNN
# held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2; ONNX Runtime has no such switch): the two make an
# AVX2 pair on the same CPU, with its own ratio column.
# Environment: MODELS (architecture names; torchvision's for resnet/densenet as listed in
# reference.py, timm's otherwise), FRAMEWORKS (default "pytorch onnxruntime openvino"),
# BATCHES (default "1 16"), AVX2=0 skips the AVX2 columns, STOCK=1 adds candle's stock
# ops (one burst a case), LOG a file for every burst as JSON lines, CLASSIFY_BIN a classify
# binary built elsewhere (a machine without cargo; default: build target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: bench/run.sh PYTHON [THREADS] [ROUNDS]}
bin=${CLASSIFY_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin classify >&2
  bin=target/release/classify
fi
args=(--python "$py" --bin "$bin" --threads "${2:-$(nproc)}" --rounds "${3:-10}"
  --burst "${BURST:-2}" --pause "${PAUSE:-1}")
[ -n "${MODELS:-}" ] && args+=(--models $MODELS)
[ -n "${FRAMEWORKS:-}" ] && args+=(--frameworks $FRAMEWORKS)
[ -n "${BATCHES:-}" ] && args+=(--batch-sizes $BATCHES)
[ "${AVX2:-1}" = 0 ] && args+=(--no-avx2)
[ "${STOCK:-0}" = 1 ] && args+=(--stock)
[ -n "${LOG:-}" ] && args+=(--log "$LOG")
exec "$py" bench/interleave.py "${args[@]}"
