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
    # Each case in a fresh process so peak RSS is its own.
    target/release/classify bench --model "$model" --batch-size "$batch" --iterations "$iters" \
      --threads "$threads" --device cpu --json \
      | "$py" -c 'import json,sys; r=json.load(sys.stdin); r["framework"]="classify"; print(json.dumps(r))' >>"$out"
  done
done
"$py" bench/reference.py --threads "$threads" --iterations "$iters" >>"$out"
"$py" - "$out" "$threads" <<'PY'
import json, sys, platform, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{datetime.date.today()}, {cpu}, {sys.argv[2]} threads, images/s (peak RSS MiB)\n")
print("| model | batch | classify | PyTorch eager | ONNX Runtime | classify / PyTorch |")
print("|---|---|---|---|---|---|")
key = lambda r: (r["model"], r["batch_size"])
for m, b in sorted({key(r) for r in rows}, key=lambda k: (k[0], k[1])):
    cell = {r["framework"]: r for r in rows if key(r) == (m, b)}
    fmt = lambda f: f'{cell[f]["images_per_sec"]:.1f} ({cell[f]["peak_rss_mb"]:.0f})' if f in cell and "images_per_sec" in cell[f] else "n/a"
    ratio = (cell["classify"]["images_per_sec"] / cell["pytorch"]["images_per_sec"]) if "classify" in cell and "images_per_sec" in cell.get("pytorch", {}) else float("nan")
    print(f"| {m} | {b} | {fmt('classify')} | {fmt('pytorch')} | {fmt('onnxruntime')} | {ratio:.2f} |")
PY
