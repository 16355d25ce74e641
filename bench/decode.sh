#!/usr/bin/env bash
# JPEG decoding and preprocessing per image: classify (release build) vs Pillow, same files,
# one run, one machine, one thread each. Prints a markdown table for the README, headed by
# the CPU model and whether classify's JPEG decoder runs libjpeg-turbo's SIMD.
#   bench/decode.sh PYTHON [ITERATIONS]
# PYTHON has Pillow, torch and torchvision (reference.py's environment). The photos are the
# fixtures' JPEGs plus the cat photo upscaled by Pillow to phone-camera sizes (2 and 12 MP).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: bench/decode.sh PYTHON [ITERATIONS]}
iters=${2:-20}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$py" - "$dir" <<'PY'
import sys
from PIL import Image
src = Image.open("tests/fixtures/photos/chelsea.jpg").convert("RGB")
for w, h in [(1600, 1200), (4032, 3024)]:
    src.resize((w, h), Image.BICUBIC).save(f"{sys.argv[1]}/chelsea_{w}x{h}.jpg", quality=92)
PY
files=(tests/fixtures/photos/chelsea.jpg tests/fixtures/photos/rocket.jpg "$dir"/chelsea_1600x1200.jpg "$dir"/chelsea_4032x3024.jpg)
ours=$(RAYON_NUM_THREADS=1 cargo bench --locked --bench decode -- --iterations "$iters" "${files[@]}")
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
OURS="$ours" "$py" - "$iters" "$cpu" "${files[@]}" <<'PY'
import json, os, sys, time
import torch
from PIL import Image
from torchvision import transforms as T
torch.set_num_threads(1)
iters, cpu, files = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
ours = {r["file"]: r for r in map(json.loads, os.environ["OURS"].splitlines())}
pre = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                 T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
def median_ms(f):
    f()
    t = []
    for _ in range(iters):
        s = time.perf_counter(); f(); t.append((time.perf_counter() - s) * 1e3)
    return sorted(t)[len(t) // 2]
decode = lambda f: Image.open(f).convert("RGB").load()
simd = "with" if next(iter(ours.values()))["simd"] else "without"
print(f"CPU: {cpu}; 1 thread; classify's JPEG decoder {simd} libjpeg-turbo SIMD; "
      f"Pillow {Image.__version__}; median of {iters}\n")
print("| photo | pixels | decode: classify | Pillow | Pillow / classify "
      "| decode+resize+crop+normalise: classify | Pillow+torchvision | ratio |")
print("|---|---|---|---|---|---|---|---|")
for f in files:
    r = ours[f]
    d = median_ms(lambda: decode(f))
    p = median_ms(lambda: pre(Image.open(f).convert("RGB")))
    print(f"| {os.path.basename(f)} | {r['width']}x{r['height']} | {r['decode_ms']:.2f} ms "
          f"| {d:.2f} ms | {d / r['decode_ms']:.2f}x | {r['preprocess_ms']:.2f} ms | {p:.2f} ms "
          f"| {p / r['preprocess_ms']:.2f}x |")
PY
