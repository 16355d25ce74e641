"""Paired, interleaved benchmark of classify against PyTorch, ONNX Runtime and OpenVINO;
bench/run.sh is the way in (it builds classify and passes the settings on).

For each (model, batch) case every reference engine is loaded once, in its own worker
process (`reference.py --worker`), and warmed up. Then ROUNDS rounds each time every engine
for a burst of about BURST seconds, one engine after the other, PAUSE seconds idle before
each burst, the order rotated from one round to the next. classify runs as
`classify bench --no-stock` (a fresh process a burst; its load is not timed). The bursts of
one round lie within a few seconds of each other, so a ratio taken within a round compares
engines under the same machine state: the shared 2-vCPU VMs here switch between a fast and
a slow state every few seconds to minutes (one ONNX Runtime process ran Lite0 batch 1 at 215
images/s for 50 s and at 131 after; one classify process at 220 for 8 s and 145 after), and
a ratio of two medians taken minutes apart measures that state as much as the engines.

The table shows each engine's median images/s over the rounds, the largest peak RSS (each
engine's own process), and for each reference the median of the per-round ratios with
their quartiles. On a CPU with AVX-512 it adds classify with its AVX2 kernels forced and
OpenVINO with oneDNN held to AVX2, and their ratio: the two engines' AVX2 paths on one
CPU, the nearest this gives to a machine without AVX-512. Every burst also goes to a JSON-lines file (its path is printed), with the
round trip of a cache line between CPU 0 and CPU 1 measured just before it by
bench/pingpong.c (`pingpong_ns`; where a C compiler is found): about 55 ns in the fast state
of the Zen 4 VM, 330 in the slow one.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"pytorch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
SHORT = {"pytorch": "PyTorch", "onnxruntime": "ORT", "openvino": "OpenVINO"}
# Caps oneDNN, and so OpenVINO's convolutions, at AVX2 (its fully connected layers run on
# MLAS, which has no such cap).
AVX2_ONEDNN = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


class Classify:
    """`classify bench` in a fresh process a burst; `isa` forces an instruction set."""

    def __init__(self, a, model, batch, isa=None):
        self.a, self.model, self.batch = a, model, batch
        self.env = dict(os.environ, **({"CLASSIFY_CPU_ISA": isa} if isa else {}))

    def burst(self, iterations, stock=False):
        cmd = [self.a.bin, "bench", "--model", self.model, "--batch-size", str(self.batch),
               "--iterations", str(iterations), "--warmup", str(self.a.warmup),
               "--threads", str(self.a.threads), "--device", "cpu", "--json"]
        out = subprocess.run(cmd + ([] if stock else ["--no-stock"]), env=self.env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def close(self):
        pass


class Reference:
    """A `reference.py --worker` process: loaded and warmed up once, timed on request. `env`:
    variables added to its environment."""

    def __init__(self, a, framework, model, batch, size, env=None):
        self.proc = subprocess.Popen(
            [a.python, os.path.join(HERE, "reference.py"), "--worker", framework, model, str(batch),
             "--threads", str(a.threads), "--warmup", str(a.warmup), "--input-size", str(size)],
            env=dict(os.environ, **(env or {})), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"reference worker {framework} {model} batch {batch} failed to start")

    def burst(self, iterations):
        self.proc.stdin.write(f"{iterations}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def pingpong_binary():
    """bench/pingpong.c built into a temporary directory, or None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = os.path.join(tempfile.mkdtemp(), "pingpong")
    built = subprocess.run([cc, "-O2", "-pthread", os.path.join(HERE, "pingpong.c"), "-o", out],
                           capture_output=True)
    return out if built.returncode == 0 else None


def pingpong_ns(binary):
    """The cross-CPU round trip now, in ns (None if it cannot be measured)."""
    if binary is None:
        return None
    out = subprocess.run([binary], capture_output=True, text=True).stdout
    m = re.match(r"(\d+) ns", out)
    return int(m.group(1)) if m else None


def measure(a, model, batch, log):
    """All rounds of one case; returns {engine: [burst results]}."""
    # Calibration: the iterations that make a burst last about BURST seconds, from one short
    # burst of each engine (not recorded). classify's first also gives the input size the
    # references run at (the architecture's own).
    engines = {"classify": Classify(a, model, batch)}
    first = {"classify": engines["classify"].burst(3)}
    size = first["classify"]["input_size"]
    if a.avx2:
        engines["classify_avx2"] = Classify(a, model, batch, "avx2")
    for fw in a.frameworks:
        engines[fw] = Reference(a, fw, model, batch, size)
    if a.avx2 and "openvino" in a.frameworks:
        # OpenVINO's convolutions (oneDNN) held to AVX2 as well: the like-for-like partner of
        # classify's AVX2 column on this CPU. ONNX Runtime has no such switch.
        engines["openvino_avx2"] = Reference(a, "openvino", model, batch, size, AVX2_ONEDNN)
    iters = {}
    for name, e in engines.items():
        r = first.get(name) or e.burst(3)
        iters[name] = max(3, round(a.burst * r["images_per_sec"] / batch))
    runs = {name: [] for name in engines}
    names = list(engines)
    for rnd in range(a.rounds):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            ns = pingpong_ns(a.pingpong)
            time.sleep(a.pause)
            r = engines[name].burst(iters[name])
            r.update(engine=name, model=model, batch_size=batch, round=rnd, iterations=iters[name],
                     pingpong_ns=ns)
            runs[name].append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
        print(f"{model} batch {batch} round {rnd + 1}/{a.rounds}: " + ", ".join(
            f"{n} {runs[n][-1]['images_per_sec']:.1f}"
            + (f" ({runs[n][-1]['pingpong_ns']} ns)" if runs[n][-1]["pingpong_ns"] else "")
            for n in names), file=sys.stderr)
    for e in engines.values():
        e.close()
    if a.stock:
        time.sleep(a.pause)
        s = engines["classify"].burst(iters["classify"], stock=True)["stock"]
        runs["stock"] = [s]
    return runs


def host_cpu():
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
                platform.processor())


def from_log(path):
    """The cases of a LOG file, as `measure` returned them, with the run's settings: the table
    of a run that was cut short (its complete rounds count) or made on another machine."""
    cases = {}
    for line in open(path):
        r = json.loads(line)
        cases.setdefault((r["model"], r["batch_size"]), {}).setdefault(r["engine"], []).append(r)
    # The rounds every engine finished; the last may have been cut off midway, or the run
    # stopped before a case's first round was whole (that case is left out).
    engines = {name for runs in cases.values() for name in runs}
    for key, runs in list(cases.items()):
        done = min(len(runs.get(name, [])) for name in engines)
        if done == 0:
            del cases[key]
        for name in runs:
            runs[name] = runs[name][:done]
    if not cases:
        sys.exit(f"{path}: no case has a whole round")
    first = next(iter(cases.values()))["classify"][0]
    settings = {"date": os.path.getmtime(path), "cpu": first["cpu"], "isa": first["isa"],
                "threads": first["threads"], "rounds": max(len(v["classify"]) for v in cases.values()),
                "frameworks": [f for f in LABELS if any(f in v for v in cases.values())],
                "burst": statistics.median(r["iterations"] * r["batch_size"] / r["images_per_sec"]
                                           for v in cases.values() for r in v["classify"])}
    return list(cases.items()), settings


def table(a, cases, isa, cpu=None, date=None):
    cpu = cpu or host_cpu()
    print(f"{date or datetime.date.today()}, {cpu}, classify kernels: {isa}, {a.threads} threads, "
          f"{a.rounds} interleaved rounds of about {a.burst:.2g} s an engine; images/s: median over the rounds "
          f"(peak RSS MiB); ratios: median of the per-round ratios [quartiles]\n")
    refs = list(a.frameworks)
    # The AVX2-forced and stock columns only where some case has them.
    extra = [(n, label) for n, label in [("classify_avx2", "classify, AVX2 forced"), ("stock", "stock candle ops"),
                                         ("openvino_avx2", "OpenVINO, AVX2")]
             if any(runs.get(n) for _, runs in cases)]
    # The AVX2 pair's ratio, where both ran.
    pair = [("classify_avx2", "openvino_avx2", "AVX2: classify / OpenVINO")]
    pair = [p for p in pair if any(runs.get(p[0]) and runs.get(p[1]) for _, runs in cases)]
    head = [f"classify ({isa})"] + [label for _, label in extra] + [LABELS[f] for f in refs]
    head += [f"classify / {SHORT[f]}" for f in refs] + [label for _, _, label in pair]
    print("| model | batch | " + " | ".join(head) + " |")
    print("|---|---|" + "---|" * len(head))
    for (model, batch), runs in cases:
        ips = lambda n: statistics.median(r["images_per_sec"] for r in runs[n]) if runs.get(n) else None
        rss = lambda n: max(r.get("peak_rss_mb") or 0 for r in runs[n])
        cell = lambda n: f"{ips(n):.1f} ({rss(n):.0f})" if runs.get(n) else "n/a"
        plain = lambda n: f"{ips(n):.1f}" if runs.get(n) else "n/a"

        def ratio(f, mine="classify"):
            if not (runs.get(mine) and runs.get(f)):
                return "n/a"
            per = [c["images_per_sec"] / r["images_per_sec"] for c, r in zip(runs[mine], runs[f])]
            q = statistics.quantiles(per, n=4) if len(per) > 1 else per * 3
            return f"{statistics.median(per):.2f} [{q[0]:.2f}-{q[2]:.2f}]"
        cells = [cell("classify")] + [plain(n) for n, _ in extra]
        cells += [cell(f) for f in refs] + [ratio(f) for f in refs] + [ratio(f, c) for c, f, _ in pair]
        done = len(runs["classify"])
        short = f" ({done} of {a.rounds} rounds)" if done < a.rounds else ""
        print(f"| {model}{short} | {batch} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from-log", metavar="LOG", help="only print the table of an earlier run's LOG file")
    ap.add_argument("--python", help="python with torch, timm, onnxruntime, openvino")
    ap.add_argument("--bin", help="the classify binary")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--burst", type=float, default=2.0, help="seconds an engine runs in one round")
    ap.add_argument("--pause", type=float, default=1.0, help="idle seconds before every burst")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "densenet121", "tf_efficientnet_lite0"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--frameworks", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--no-avx2", dest="avx2", action="store_false", help="skip classify with AVX2 forced (and OpenVINO held to AVX2)")
    ap.add_argument("--stock", action="store_true", help="also time candle's stock ops once a case")
    ap.add_argument("--log", help="JSON-lines file for every burst (default: a temporary file)")
    a = ap.parse_args()
    if a.from_log:
        cases, s = from_log(a.from_log)
        a.threads, a.rounds, a.frameworks, a.burst = s["threads"], s["rounds"], s["frameworks"], s["burst"]
        date = datetime.date.fromtimestamp(s["date"])
        return table(a, cases, s["isa"], s["cpu"], date)
    if not (a.python and a.bin):
        ap.error("--python and --bin are required (unless --from-log)")
    isa = Classify(a, "resnet18", 1).burst(1)["isa"]
    a.avx2 = a.avx2 and isa == "avx512"
    a.pingpong = pingpong_binary() if (os.cpu_count() or 1) >= 2 else None
    log_path = a.log or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"classify-bench-{os.getpid()}.jsonl")
    print(f"every burst: {log_path}", file=sys.stderr)
    cases = []
    with open(log_path, "w") as log:
        for model in a.models:
            for batch in a.batch_sizes:
                cases.append(((model, batch), measure(a, model, batch, log)))
    table(a, cases, isa)


if __name__ == "__main__":
    main()
