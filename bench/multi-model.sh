#!/usr/bin/env bash
# Two models behind one `classify serve` against each alone: the same load per model
# (hey, CONCURRENCY connections per model, REQUESTS requests each, raw JPEG bodies to
# TorchServe's /predictions/{name}), so the two-model run is CONCURRENCY x 2 mixed. Prints
# req/s, p50/p99 and non-200 answers per model, and each server's peak RSS (VmHWM) with
# the two-model server's against the sum of the single ones.
#   bench/multi-model.sh A.toml B.toml
# A.toml and B.toml each hold one [[models]] entry (see the README's --models-file); the
# two-model server gets both. Needs `hey` (apt install hey).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: bench/multi-model.sh A.toml B.toml" >&2; exit 2; }
command -v hey >/dev/null || { echo "multi-model.sh: needs hey (apt install hey)" >&2; exit 2; }
concurrency=${CONCURRENCY:-16}
requests=${REQUESTS:-400}
image=${IMAGE:-tests/fixtures/photos/rocket.jpg}
cargo build --release --locked --bin classify >&2
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
cat "$1" > "$work/both.toml"; echo >> "$work/both.toml"; cat "$2" >> "$work/both.toml"
name_of() { python3 -c '
import sys, tomllib
m = tomllib.load(open(sys.argv[1], "rb"))["models"][0]
print(m.get("name") or m["model"].rstrip("/").split("/")[-1].split("@")[0])' "$1"; }
names=("$(name_of "$1")" "$(name_of "$2")")


# run LABEL TOML MODEL...: start a server, load each MODEL at once, print rows, then RSS.
run() {
  local label=$1 file=$2; shift 2
  target/release/classify serve --port 0 --queue-size 1024 --models-file "$file" 2>"$work/log" &
  pid=$!
  for _ in $(seq 1200); do grep -q "listening" "$work/log" && curl -sf "$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log")/ready" >/dev/null && break; sleep 0.1; done
  local addr; addr=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log" | head -1)
  local hey_pids=()
  for model in "$@"; do
    hey -n "$requests" -c "$concurrency" -m POST -T image/jpeg -D "$image" \
      "$addr/predictions/$model" > "$work/hey-$model.txt" &
    hey_pids+=($!)
  done
  wait "${hey_pids[@]}"
  for model in "$@"; do
    python3 bench/hey.py "$label" "$model" < "$work/hey-$model.txt"
  done
  awk '/VmHWM/ {print $2}' "/proc/$pid/status" > "$work/rss-$label"
  kill $pid; wait $pid || true; pid=
}

echo "| server | model | req/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|"
run "${names[0]} alone" "$1" "${names[0]}"
run "${names[1]} alone" "$2" "${names[1]}"
run "both" "$work/both.toml" "${names[@]}"
a=$(cat "$work/rss-${names[0]} alone"); b=$(cat "$work/rss-${names[1]} alone"); both=$(cat "$work/rss-both")
echo
echo "peak RSS: ${names[0]} alone $((a / 1024)) MiB, ${names[1]} alone $((b / 1024)) MiB, both $((both / 1024)) MiB" \
  "= $(python3 -c "print(f'{$both / ($a + $b):.2f}')")x the sum (target <= 1.10)"
