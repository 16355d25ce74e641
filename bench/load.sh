#!/usr/bin/env bash
# Bounded loopback load test of `classify serve` (release build): throughput, p50/p99 latency
# and errors at concurrency 1, 8 and 64, with dynamic batching (--max-batch-size 16) and
# without (--max-batch-size 1).
#   bench/load.sh MODEL_ARGS...   e.g. bench/load.sh --model tf_efficientnet_lite0 --weights lite0.pth
# Each run stops after REQUESTS requests (default 200) or 60 s, whichever is first.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-200}
image=${IMAGE:-tests/fixtures/photos/rocket.jpg}
cargo build --release --locked --bin classify --example loadtest >&2
for batch in 16 1; do
  log=$(mktemp)
  target/release/classify serve --port 0 --max-batch-size "$batch" --queue-size 1024 "$@" 2>"$log" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 600); do grep -q 'ready' "$log" && break; sleep 0.1; done
  addr=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
  for c in 1 8 64; do
    echo -n "max_batch_size=$batch "
    target/release/examples/loadtest --url "$addr/predict" --image "$image" \
      --concurrency "$c" --requests "$requests" --max-seconds 60
  done
  kill $pid; wait $pid || true
done
