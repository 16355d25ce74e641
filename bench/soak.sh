#!/usr/bin/env bash
# Soak test (loopback, bounded): mixed good and corrupt requests at concurrency 64 for
# SECONDS (default 180), sampling the server's RSS. Reports 5xx on good requests, crashes,
# and RSS growth after warm-up (the first 20% of the run).
#   bench/soak.sh MODEL_ARGS...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_TOTAL:-180}
cargo build --release --locked --bin classify --example loadtest >&2
log=$(mktemp)
target/release/classify serve --port 0 --queue-size 1024 "$@" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q 'ready' "$log" && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$log" | head -1)
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
samples=$(mktemp)
( while kill -0 $pid 2>/dev/null; do echo "$(date +%s) $(rss)" >>"$samples"; sleep 2; done ) &
sampler=$!
result=$(target/release/examples/loadtest --url "$addr/predict" --image tests/fixtures/photos/rocket.jpg \
  --concurrency 64 --requests 100000000 --max-seconds "$seconds" --bad-every 4)
alive=$(kill -0 $pid 2>/dev/null && echo yes || echo no)
kill $sampler 2>/dev/null || true
python3 - "$samples" "$result" "$alive" <<'PY'
import json, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 2]
t0 = rows[0][0]; dur = rows[-1][0] - t0
warm = [r for r in rows if r[0] - t0 >= 0.2 * dur]
base, peak, last = warm[0][1], max(r[1] for r in warm), rows[-1][1]
res = json.loads(sys.argv[2])
print(json.dumps({"seconds": dur, "load": res, "server_alive": sys.argv[3] == "yes",
                  "rss_mb_after_warmup": base / 1024, "rss_mb_peak": peak / 1024, "rss_mb_end": last / 1024,
                  "rss_growth_pct": 100 * (peak - base) / base}))
PY
