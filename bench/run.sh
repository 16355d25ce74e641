#!/usr/bin/env bash
# Side-by-side CPU benchmark: classify (release build), PyTorch eager and ONNX Runtime, same
# shapes and thread count, one run, one machine. Prints a markdown table for the README.
#   bench/run.sh PYTHON [THREADS] [ITERATIONS]
# PYTHON is a python with torch, torchvision, timm, onnx and onnxruntime (see reference.py).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: bench/run.sh PYTHON [THREADS] [ITERATIONS]}
threads=${2:-$(nproc)}
iters=${3:-10}
out=$(mktemp)
cargo build --release --locked --bin classify >&2
for model in resnet18 resnet50 densenet121 efficientnet_lite0; do
  for batch in 1 16; do
    # Fast path alone in a fresh process, so its peak RSS is its own; then a second process
    # times the fast and the stock path in alternation for the stock column.
    fast=$(target/release/classify bench --model "$model" --batch-size "$batch" --iterations "$iters" \
      --threads "$threads" --device cpu --json --no-stock)
    both=$(target/release/classify bench --model "$model" --batch-size "$batch" --iterations "$iters" \
      --threads "$threads" --device cpu --json)
    "$py" -c 'import json,sys; r=json.loads(sys.argv[1]); r["framework"]="classify"; r["stock"]=json.loads(sys.argv[2])["stock"]; print(json.dumps(r))' "$fast" "$both" >>"$out"
  done
done
"$py" bench/reference.py --threads "$threads" --iterations "$iters" >>"$out"
"$py" - "$out" "$threads" <<'PY'
import json, sys, platform, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{datetime.date.today()}, {cpu}, {sys.argv[2]} threads, images/s (peak RSS MiB)\n")
print("| model | batch | classify | classify, stock candle ops | PyTorch eager | ONNX Runtime | classify / PyTorch | classify / ORT |")
print("|---|---|---|---|---|---|---|---|")
key = lambda r: (r["model"], r["batch_size"])
for m, b in sorted({key(r) for r in rows}, key=lambda k: (k[0], k[1])):
    cell = {r["framework"]: r for r in rows if key(r) == (m, b)}
    fmt = lambda f: f'{cell[f]["images_per_sec"]:.1f} ({cell[f]["peak_rss_mb"]:.0f})' if f in cell and "images_per_sec" in cell[f] else "n/a"
    ips = lambda f: cell.get(f, {}).get("images_per_sec", float("nan"))
    stock = cell.get("classify", {}).get("stock") or {}
    stock_cell = f'{stock["images_per_sec"]:.1f}' if stock else "n/a"
    print(f"| {m} | {b} | {fmt('classify')} | {stock_cell} | {fmt('pytorch')} | {fmt('onnxruntime')} | {ips('classify') / ips('pytorch'):.2f} | {ips('classify') / ips('onnxruntime'):.2f} |")
PY
