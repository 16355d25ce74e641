#!/usr/bin/env bash
# `classify serve` against the recipe it replaces (bench/flask_app.py: PyTorch's Flask REST
# API tutorial, DenseNet-121), both on this machine, both loaded with the same multipart
# POST /predict (field `file`, tests/fixtures/photos/rocket.jpg) by `hey`, at each
# concurrency, the two servers timed back to back and the whole sequence repeated ROUNDS
# times. Prints a markdown table of median req/s and latency, and classify's ratio.
#   bench/flask-vs-classify.sh PYTHON [SECONDS] [ROUNDS] [CONCURRENCIES]
# PYTHON has torch, torchvision, flask and safetensors (see bench/reference.py). Needs `hey`
# (Debian: apt install hey). Both servers run the same random-weight DenseNet-121 (the
# hub is not reachable here; speed does not depend on the values) with all CPU threads.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: bench/flask-vs-classify.sh PYTHON [SECONDS] [ROUNDS] [CONCURRENCIES]}
seconds=${2:-30}
rounds=${3:-2}
levels=${4:-8 32}
command -v hey >/dev/null || { echo "flask-vs-classify: needs hey (apt install hey)" >&2; exit 2; }
cargo build --release --locked --bin classify >&2
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

"$py" - "$work" <<'PY'
import socket, sys, torch, torchvision
from safetensors.torch import save_file
work = sys.argv[1]
# The same network for classify: torchvision's initialisation, as a checkpoint.
model = torchvision.models.densenet121(weights=None).eval()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{work}/densenet121.safetensors")
jpeg = open("tests/fixtures/photos/rocket.jpg", "rb").read()
body = (b"--classifybench\r\nContent-Disposition: form-data; name=\"file\"; filename=\"rocket.jpg\"\r\n"
        b"Content-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n--classifybench--\r\n")
open(f"{work}/body", "wb").write(body)
for name in ("flask", "classify"):
    s = socket.socket(); s.bind(("127.0.0.1", 0))
    open(f"{work}/{name}.port", "w").write(str(s.getsockname()[1])); s.close()
PY
flask_port=$(cat "$work/flask.port")
classify_port=$(cat "$work/classify.port")

"$py" bench/flask_app.py "$flask_port" 2>"$work/flask.log" &
pids+=($!)
target/release/classify serve --port "$classify_port" --model densenet121 \
  --weights "$work/densenet121.safetensors" 2>"$work/classify.log" &
pids+=($!)
ready() { curl -s -o /dev/null -w '%{http_code}' -X POST -H "Content-Type: multipart/form-data; boundary=classifybench" --data-binary "@$work/body" "$1" || true; }
for url in "http://127.0.0.1:$flask_port/predict" "http://127.0.0.1:$classify_port/predict"; do
  for _ in $(seq 600); do [ "$(ready "$url")" = 200 ] && break; sleep 0.2; done
  [ "$(ready "$url")" = 200 ] || { echo "flask-vs-classify: $url never answered 200" >&2; tail "$work"/*.log >&2; exit 1; }
  for _ in $(seq 5); do ready "$url" >/dev/null; done
done

# A decoder without its SIMD code would understate classify (README, Install).
if grep -q "JPEG decoding runs without its SIMD" "$work/classify.log"; then
  echo "flask-vs-classify: warning: classify was built without NASM; its JPEG decoding is 2-3x slower" >&2
fi

rss() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }
for round in $(seq "$rounds"); do
  for c in $levels; do
    for server in flask classify; do
      port=$(cat "$work/$server.port")
      echo "round $round: $server, concurrency $c, ${seconds}s" >&2
      hey -z "${seconds}s" -c "$c" -m POST -T "multipart/form-data; boundary=classifybench" \
        -D "$work/body" "http://127.0.0.1:$port/predict" >"$work/hey-$server-$c-$round.txt"
    done
  done
done
"$py" - "$work" "$rounds" "$levels" "$(rss "${pids[0]}")" "$(rss "${pids[1]}")" <<'PY'
import re, statistics, sys, glob, platform
work, rounds, levels = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
peak = {"flask": sys.argv[4], "classify": sys.argv[5]}
sys.path.insert(0, "bench")
import hey
def parse(path):
    return hey.parse(open(path).read())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{cpu}, DenseNet-121, POST /predict multipart (rocket.jpg), median of {rounds} rounds; peak RSS Flask {peak['flask']} MiB, classify {peak['classify']} MiB\n")
print("| concurrency | Flask req/s | Flask p50 ms | Flask p99 ms | classify req/s | classify p50 ms | classify p99 ms | classify / Flask | non-200 or errors (Flask, classify) |")
print("|---|---|---|---|---|---|---|---|---|")
for c in levels:
    row = {}
    for server in ("flask", "classify"):
        runs = [parse(p) for p in sorted(glob.glob(f"{work}/hey-{server}-{c}-*.txt"))]
        med = lambda f: statistics.median(f(r) for r in runs)
        bad = sum(sum(n for code, n in r[2].items() if code != 200) + r[3] for r in runs)
        row[server] = (med(lambda r: r[0]), med(lambda r: r[1].get(50, float("nan"))), med(lambda r: r[1].get(99, float("nan"))), bad)
    f, k = row["flask"], row["classify"]
    print(f"| {c} | {f[0]:.1f} | {f[1]:.0f} | {f[2]:.0f} | {k[0]:.1f} | {k[1]:.0f} | {k[2]:.0f} | {k[0] / f[0]:.2f}x | {f[3]}, {k[3]} |")
PY
