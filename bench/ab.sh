#!/usr/bin/env bash
# Compare classify binaries on one case, interleaved so that the machine's drift hits them
# alike: ROUNDS rounds, each timing every binary once (`classify bench --no-stock`, in
# its own process), then the median and the best images/s per binary.
#
#   bench/ab.sh MODEL BATCH ROUNDS BINARY...
#   e.g. bench/ab.sh resnet50 16 5 /tmp/classify-before target/release/classify
#
# THREADS (default 2) sets --threads, ITERATIONS (default 8) -n: at batch 1 a small network
# wants more (Lite0: -n 8 is 80 ms, too short to outlast a shared machine's jitter).
set -euo pipefail
if [ $# -lt 4 ]; then
    sed -n '2,9p' "$0" >&2
    exit 2
fi
model=$1 batch=$2 rounds=$3
shift 3
for _ in $(seq "$rounds"); do
    for bin in "$@"; do
        "$bin" bench --model "$model" -b "$batch" -n "${ITERATIONS:-8}" --threads "${THREADS:-2}" --device cpu \
            --no-stock --json |
            python3 -c 'import json, sys; print(sys.argv[1], json.load(sys.stdin)["images_per_sec"])' "$bin"
    done
done | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    bin, ips = line.rsplit(" ", 1)
    runs.setdefault(bin, []).append(float(ips))
for bin, v in runs.items():
    each = ", ".join("%.1f" % x for x in v)
    print(f"{sys.argv[1]} batch {sys.argv[2]} {bin}: median {statistics.median(v):.1f}, best {max(v):.1f} images/s ({each})")
' "$model" "$batch"
