"""PyTorch, ONNX Runtime and OpenVINO on the same shapes as `classify bench`, for the README
table. Run by hand (not in CI), pinned to the same thread count:

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install torch torchvision timm onnx onnxruntime openvino
    /tmp/pyref/bin/python bench/reference.py --threads 2 --batch-sizes 1 16 --iterations 10

Prints one JSON object per (framework, model, batch size): images_per_sec, latency
percentiles and the process's peak RSS measured in a fresh subprocess per case.
bench/run.sh (bench/interleave.py) drives it as a worker (`--worker`) instead, to time the
engines in alternation.

ONNX Runtime and OpenVINO run the same ONNX export (opset 17, static input shape).
OpenVINO gets the LATENCY hint, the thread count, and f32 inference precision: on CPUs with
bf16 or AMX it would otherwise drop to bf16 by default, and every engine here is compared in
f32 (classify never changes precision).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# torchvision's own networks (what torchvision users run); any other name is timm's.
MODELS = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet50": ("torchvision", "resnet50"),
    "densenet121": ("torchvision", "densenet121"),
    "tf_efficientnet_lite0": ("timm", "tf_efficientnet_lite0"),
}


def build(name):
    """torchvision's network for the names in MODELS marked so, else timm's."""
    import timm
    import torchvision
    kind, ctor = MODELS.get(name, ("timm", name))
    model = getattr(torchvision.models, ctor)() if kind == "torchvision" else timm.create_model(ctor, pretrained=False)
    return model.eval()


def engine(framework, name, batch, threads, size):
    """One forward pass of `name` at `batch` in `framework`, as a function of no arguments."""
    import torch
    torch.set_num_threads(threads)
    model = build(name)
    x = torch.randn(batch, 3, size, size)
    if framework == "pytorch":
        model = model.to(memory_format=torch.channels_last)
        xc = x.to(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                model(xc)
        return run
    path = os.path.join(tempfile.mkdtemp(), f"{name}.onnx")
    # A static shape: with a dynamic batch axis ONNX Runtime runs Lite0 at about half speed
    # (batch 1: 69 against 128 images/s on the Zen 4 VM; ResNet-50 is level), and OpenVINO
    # needs it too. Every case is one fixed batch size, so this is each engine's best path.
    torch.onnx.export(model, x, path, input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    xn = x.numpy()
    if framework == "openvino":
        import openvino as ov
        core = ov.Core()
        net = core.read_model(path)
        compiled = core.compile_model(net, "CPU", {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
        })
        request = compiled.create_infer_request()
        return lambda: request.infer({0: xn})
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": xn})


def timed(run, iterations, batch):
    """images/s, latency percentiles and this process's peak RSS over `iterations` calls."""
    import numpy as np
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    times.sort()
    pct = lambda p: times[min(len(times) - 1, max(0, int(np.ceil(len(times) * p)) - 1))] * 1000
    return {
        "images_per_sec": batch * len(times) / sum(times),
        "latency_ms_p50": pct(0.5), "latency_ms_p90": pct(0.9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def case(framework, name, batch, iterations, warmup, threads, size):
    run = engine(framework, name, batch, threads, size)
    for _ in range(warmup):
        run()
    return {"framework": framework, "model": name, "batch_size": batch, "threads": threads,
            "input_size": size, **timed(run, iterations, batch)}


def worker(framework, name, batch, warmup, threads, size):
    """Load once, warm up, print "ready"; then for every line N on stdin time N passes and
    print one JSON line (bench/interleave.py drives this)."""
    run = engine(framework, name, batch, threads, size)
    for _ in range(warmup):
        run()
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(timed(run, int(line), batch)), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--frameworks", nargs="+", default=["pytorch", "onnxruntime", "openvino"])
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=224, help="side of the square input (classify bench uses the architecture's)")
    ap.add_argument("--one", nargs=3, metavar=("FRAMEWORK", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], int(a.worker[2]), a.warmup, a.threads, a.input_size)
        return
    if a.one:
        print(json.dumps(case(a.one[0], a.one[1], int(a.one[2]), a.iterations, a.warmup, a.threads, a.input_size)))
        return
    # Each case in its own process so peak RSS is that case's alone.
    for name in a.models:
        for batch in a.batch_sizes:
            for fw in a.frameworks:
                out = subprocess.run([sys.executable, __file__, "--one", fw, name, str(batch),
                                      "--threads", str(a.threads), "--iterations", str(a.iterations),
                                      "--warmup", str(a.warmup), "--input-size", str(a.input_size)],
                                     capture_output=True, text=True)
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else json.dumps(
                    {"framework": fw, "model": name, "batch_size": batch, "error": out.stderr[-500:]})
                print(line, flush=True)


if __name__ == "__main__":
    main()
