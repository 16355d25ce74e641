#!/usr/bin/env bash
# Side-by-side CPU benchmark: classify (release build), PyTorch eager and ONNX Runtime, same
# shapes and thread count, one run, one machine. Prints a markdown table for the README.
#   bench/run.sh PYTHON [THREADS] [ITERATIONS] [ROUNDS]
# PYTHON is a python with torch, torchvision, timm, onnx and onnxruntime (see reference.py).
#
# Shared machines drift by 10% and more within minutes, so the three frameworks are timed
# back to back for each case, and the whole sequence is repeated ROUNDS times (default 3):
# the table shows each framework's median images/s over the rounds, and the largest peak
# RSS. Every measurement is a fresh process, so its peak RSS is its own. The stock-candle
# column is timed once, in alternation with the fast path (`classify bench` without
# --no-stock).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: bench/run.sh PYTHON [THREADS] [ITERATIONS] [ROUNDS]}
threads=${2:-$(nproc)}
iters=${3:-10}
rounds=${4:-3}
out=$(mktemp)
cargo build --release --locked --bin classify >&2
classify() {
  target/release/classify bench --model "$1" --batch-size "$2" --iterations "$iters" \
    --threads "$threads" --device cpu --json "${@:3}"
}
for round in $(seq "$rounds"); do
  for model in resnet18 resnet50 densenet121 tf_efficientnet_lite0; do
    for batch in 1 16; do
      echo "round $round: $model batch $batch" >&2
      classify "$model" "$batch" --no-stock >>"$out"
      for fw in pytorch onnxruntime; do
        "$py" bench/reference.py --one "$fw" "$model" "$batch" --threads "$threads" \
          --iterations "$iters" >>"$out"
      done
    done
  done
done
for model in resnet18 resnet50 densenet121 tf_efficientnet_lite0; do
  for batch in 1 16; do
    classify "$model" "$batch" | "$py" -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"framework": "stock", **r["stock"], "model": r["model"], "batch_size": r["batch_size"]}))' >>"$out"
  done
done
"$py" - "$out" "$threads" "$rounds" <<'PY'
import json, sys, platform, datetime, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    r.setdefault("framework", "classify")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{datetime.date.today()}, {cpu}, {sys.argv[2]} threads, median of {sys.argv[3]} rounds, images/s (peak RSS MiB)\n")
print("| model | batch | classify | classify, stock candle ops | PyTorch eager | ONNX Runtime | classify / PyTorch | classify / ORT |")
print("|---|---|---|---|---|---|---|---|")
key = lambda r: (r["model"], r["batch_size"])
for m, b in sorted({key(r) for r in rows}):
    runs = lambda f: [r for r in rows if key(r) == (m, b) and r["framework"] == f and "images_per_sec" in r]
    ips = lambda f: statistics.median(r["images_per_sec"] for r in runs(f)) if runs(f) else float("nan")
    rss = lambda f: max(r.get("peak_rss_mb") or 0 for r in runs(f)) if runs(f) else float("nan")
    cell = lambda f: f"{ips(f):.1f} ({rss(f):.0f})" if runs(f) else "n/a"
    stock = f"{ips('stock'):.1f}" if runs("stock") else "n/a"
    print(f"| {m} | {b} | {cell('classify')} | {stock} | {cell('pytorch')} | {cell('onnxruntime')} | {ips('classify') / ips('pytorch'):.2f} | {ips('classify') / ips('onnxruntime'):.2f} |")
PY
