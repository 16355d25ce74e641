#!/usr/bin/env bash
# Bounded loopback load test of `classify serve` (release build) with `hey`: throughput,
# p50/p99 latency and non-200 answers at concurrency 1, 8 and 64, with dynamic batching
# (--max-batch-size 16) and without (--max-batch-size 1). Raw JPEG bodies
# (tests/fixtures/photos/rocket.jpg unless IMAGE is set) on keep-alive connections.
#   bench/load.sh MODEL_ARGS...   e.g. bench/load.sh --model tf_efficientnet_lite0 --weights lite0.pth
# Each run sends REQUESTS requests (default 200). Needs `hey` (apt install hey).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-200}
image=${IMAGE:-tests/fixtures/photos/rocket.jpg}
command -v hey >/dev/null || { echo "load.sh: needs hey (apt install hey)" >&2; exit 2; }
cargo build --release --locked --bin classify >&2
echo "| max batch | concurrency | req/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|"
for batch in 16 1; do
  log=$(mktemp)
  target/release/classify serve --port 0 --max-batch-size "$batch" --queue-size 1024 "$@" 2>"$log" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 600); do grep -q 'ready' "$log" && break; sleep 0.1; done
  addr=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
  for c in 1 8 64; do
    hey -n "$requests" -c "$c" -m POST -T image/jpeg -D "$image" "$addr/predict" |
      python3 bench/hey.py "$batch" "$c"
  done
  kill $pid; wait $pid || true
done
