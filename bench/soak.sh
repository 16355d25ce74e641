#!/usr/bin/env bash
# Soak test (loopback, bounded): good and corrupt requests at the same time for
# SECONDS_TOTAL (default 180), two `hey` streams at concurrency 48 (rocket.jpg) and 16 (its
# first half: a truncated JPEG), sampling the server's RSS every 2 s. Reports the status
# codes of each stream (good ones must all be 200, corrupt ones all 400), whether the
# server survived, and RSS growth after warm-up: the highest RSS in the last quarter of the
# run against the highest in the second quarter (the first quarter is warm-up). RSS swings
# with each batch in flight, so peaks are compared with peaks.
#   bench/soak.sh MODEL_ARGS...      Needs `hey` (apt install hey).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_TOTAL:-180}
command -v hey >/dev/null || { echo "soak.sh: needs hey (apt install hey)" >&2; exit 2; }
cargo build --release --locked --bin classify >&2
work=$(mktemp -d)
good=tests/fixtures/photos/rocket.jpg
head -c "$(($(stat -c %s "$good") / 2))" "$good" >"$work/truncated.jpg"
target/release/classify serve --port 0 --queue-size 1024 "$@" 2>"$work/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 600); do grep -q 'ready' "$work/log" && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log" | head -1)
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
( while kill -0 $pid 2>/dev/null; do echo "$(date +%s) $(rss)" >>"$work/samples"; sleep 2; done ) &
sampler=$!
hey -z "${seconds}s" -c 48 -m POST -T image/jpeg -D "$good" "$addr/predict" >"$work/good.txt" &
hey_good=$!
hey -z "${seconds}s" -c 16 -m POST -T image/jpeg -D "$work/truncated.jpg" "$addr/predict" >"$work/bad.txt"
wait $hey_good
alive=$(kill -0 $pid 2>/dev/null && echo yes || echo no)
kill $sampler 2>/dev/null || true
python3 - "$work" "$alive" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from hey import parse
work, alive = sys.argv[1], sys.argv[2] == "yes"
def stream(name):
    r = parse(open(f"{work}/{name}.txt").read())
    return {"status_codes": {str(c): n for c, n in r.status_codes.items()},
            "connection_errors": r.errors, "requests_per_sec": r.requests_per_sec}
rows = [tuple(map(int, l.split())) for l in open(f"{work}/samples") if len(l.split()) == 2]
t0 = rows[0][0]; dur = rows[-1][0] - t0
window = lambda a, b: [r[1] for r in rows if a * dur <= r[0] - t0 <= b * dur]
early, late = max(window(0.25, 0.5)), max(window(0.75, 1.0))
print(json.dumps({"seconds": dur, "good": stream("good"), "corrupt": stream("bad"), "server_alive": alive,
                  "rss_mb_peak_q2": early / 1024, "rss_mb_peak_q4": late / 1024, "rss_mb_end": rows[-1][1] / 1024,
                  "rss_growth_pct": 100 * (late - early) / early}))
PY
