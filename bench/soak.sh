#!/usr/bin/env bash
# Soak test (loopback, bounded): mixed good and corrupt requests at concurrency 64 for
# SECONDS_TOTAL (default 180), sampling the server's RSS every 2 s. Reports errors on good
# requests, whether the server survived, and RSS growth after warm-up: the highest RSS in
# the last quarter of the run against the highest in the second quarter (the first quarter
# is warm-up). RSS swings with each batch in flight, so peaks are compared with peaks.
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
window = lambda a, b: [r[1] for r in rows if a * dur <= r[0] - t0 <= b * dur]
early, late = max(window(0.25, 0.5)), max(window(0.75, 1.0))
res = json.loads(sys.argv[2])
print(json.dumps({"seconds": dur, "load": res, "server_alive": sys.argv[3] == "yes",
                  "rss_mb_peak_q2": early / 1024, "rss_mb_peak_q4": late / 1024, "rss_mb_end": rows[-1][1] / 1024,
                  "rss_growth_pct": 100 * (late - early) / early}))
PY
