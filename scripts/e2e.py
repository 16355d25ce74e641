"""End-to-end checks of `classify serve` with real clients, run by scripts/test after
`cargo test`. One server hosts two models (EfficientNet-Lite0 as the default and Lite1 as
`lite1`, from a --models-file) with HTTP and gRPC:

1. KServe / Triton Open Inference Protocol v2 with the official `tritonclient[http]`
   client, binary-tensor and JSON (base64) requests, for each model, with the
   classification extension.
2. The same protocol over gRPC with `tritonclient[grpc]`: health, metadata and inference
   for each model, answers identical to HTTP's; hostile calls (a malformed message, one
   over the size limit, unknown model names with path characters) get errors and the
   server goes on.
3. API keys over gRPC (a second server with CLASSIFY_API_KEYS): no key and a wrong key are
   refused, the right key in either header works, health checks stay open.
4. A real browser (Debian's headless Chromium via Selenium) on the upload page: with
   JavaScript (preview + fetch + bars) and without (plain form post, result page), each
   picking the second model.

Usage: python scripts/e2e.py BINARY WEIGHTS_DIR PHOTOS_DIR
"""
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np


MODELS = ["tf_efficientnet_lite0", "lite1"]
# PyTorch's (timm's) top-5 for each model on the photos, made by the fixtures' scripts.
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
REFERENCES = {
    "tf_efficientnet_lite0": os.path.join(FIXTURES, "efficientnet_lite0", "reference.json"),
    "lite1": os.path.join(FIXTURES, "efficientnet_lite", "lite1.json"),
}


def reference(model, photo):
    with open(REFERENCES[model]) as f:
        image = json.load(f)["images"][photo]
    return np.array(image["top5"]), np.array(image["top5_probs"])
MAX_BODY_MB = 2


def start_server(args, env=None):
    """Start `classify serve ARGS` on free ports; returns (process, http addr, grpc addr)."""
    proc = subprocess.Popen(
        [*args, "--port", "0", "--grpc-port", "0", "--max-body-mb", str(MAX_BODY_MB)],
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    def expect_line(pattern):
        # Notices (e.g. how many API keys) may come first.
        for _ in range(5):
            line = proc.stderr.readline()
            m = re.match(pattern, line)
            if m:
                return m.group(1)
        proc.kill()
        raise SystemExit(f"the server never printed {pattern!r}; last line: {line!r}")

    addr = expect_line(r"classify: listening on http://(\S+)")
    grpc_addr = expect_line(r"classify: gRPC \(Open Inference Protocol\) on (\S+)")
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://{addr}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, addr, grpc_addr
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server never became ready")


def write_models_file(weights_dir, folder):
    """Lite0 with its TensorFlow preprocessing (the default model), Lite1 with the
    built-in preprocessing for its name; weights given relative to the file."""
    path = os.path.join(folder, "models.toml")
    with open(path, "w") as f:
        f.write(f"""
[[models]]
model = "tf_efficientnet_lite0"
weights = "{os.path.join(weights_dir, 'efficientnet-lite0-57934424.pth')}"
interpolation = "bilinear"
mean = [0.49803922, 0.49803922, 0.49803922]
std = [0.5019608, 0.5019608, 0.5019608]

[[models]]
model = "efficientnet_lite1"
name = "lite1"
weights = "{os.path.join(weights_dir, 'efficientnet-lite1-77cc7160.pth')}"
max_batch_size = 8
""")
    return path


def read_photos(photos):
    return [open(os.path.join(photos, n), "rb").read() for n in ("rocket.jpg", "coffee.png")]


def check_kserve(addr, photos):
    """tritonclient.http against both models; returns {model: (ids, probs)} for gRPC."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=addr)
    assert client.is_server_live() and client.is_server_ready()
    images = read_photos(photos)
    answers = {}
    for model in MODELS:
        assert client.is_model_ready(model)
        meta = client.get_model_metadata(model)
        assert meta["inputs"][0]["datatype"] == "BYTES", meta
        # The versioned routes, as tritonclient addresses them with model_version.
        assert client.is_model_ready(model, model_version="1")
        assert client.get_model_metadata(model, model_version="1")["versions"] == ["1"]
        for binary, version in ((True, ""), (False, "1")):
            data = np.array(images if binary else [base64.b64encode(i) for i in images], dtype=np.object_)
            inp = httpclient.InferInput("image", [len(images)], "BYTES")
            inp.set_data_from_numpy(data, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=False)
                       for n in ("class_ids", "probabilities", "labels")]
            outputs.append(httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=2))
            result = client.infer(model, [inp], model_version=version,
                                  outputs=outputs, parameters={"top_k": 3})
            ids = result.as_numpy("class_ids")
            probs = result.as_numpy("probabilities")
            labels = result.as_numpy("labels")
            assert ids.shape == (2, 3), ids.shape
            for row, photo in enumerate(("rocket.jpg", "coffee.png")):
                want_ids, want_probs = reference(model, photo)
                assert (ids[row] == want_ids[:3]).all(), (model, photo, ids[row], want_ids)
                assert np.allclose(probs[row], want_probs[:3], atol=1e-4), (model, photo, probs[row])
            label = labels[1][0]
            label = label.decode() if isinstance(label, bytes) else label
            assert label == "espresso", labels
            answers[model] = (ids, probs)
        # The classification extension: "score:class_id:label", top 2.
        inp = httpclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([images[1]], dtype=np.object_), binary_data=True)
        result = client.infer(model, [inp], outputs=[
            httpclient.InferRequestedOutput("probabilities", binary_data=False, class_count=2)])
        classes = result.as_numpy("probabilities")
        assert classes.shape == (1, 2), classes.shape
        first = classes[0][0]
        first = first.decode() if isinstance(first, bytes) else first
        score, index, label = first.split(":", 2)
        assert (index, label) == ("967", "espresso"), first
        assert abs(float(score) - answers[model][1][1][0]) < 1e-6, (first, answers[model][1])
    assert not np.allclose(answers[MODELS[0]][1], answers[MODELS[1]][1]), "two different models"
    print("kserve v2 over HTTP with tritonclient, two models (versions, classification): ok")
    return answers


def check_grpc(grpc_addr, photos, http_answers):
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=grpc_addr)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "classify" and "classification" in meta.extensions, meta
    images = read_photos(photos)
    for model in MODELS:
        assert client.is_model_ready(model) and client.is_model_ready(model, "1")
        meta = client.get_model_metadata(model)
        assert meta.name == model and meta.inputs[0].datatype == "BYTES", meta
        inp = grpcclient.InferInput("image", [len(images)], "BYTES")
        inp.set_data_from_numpy(np.array(images, dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput(n) for n in ("class_ids", "probabilities")]
        outputs.append(grpcclient.InferRequestedOutput("labels", class_count=1))
        result = client.infer(model, [inp], outputs=outputs, parameters={"top_k": 3}, request_id="7")
        ids, probs = result.as_numpy("class_ids"), result.as_numpy("probabilities")
        assert result.get_response().id == "7"
        assert (ids == http_answers[model][0]).all(), (ids, http_answers[model][0])
        assert np.allclose(probs, http_answers[model][1], atol=1e-6), (probs, http_answers[model][1])
        top = result.as_numpy("labels")[1][0].decode()
        assert top.endswith(":967:espresso"), top
    print("kserve v2 over gRPC with tritonclient, two models, same answers as HTTP: ok")

    def expect(code, call):
        try:
            call()
        except InferenceServerException as e:
            assert e.status() == f"StatusCode.{code}", (code, e.status(), e.message())
            return e
        except grpc.RpcError as e:
            assert e.code() == getattr(grpc.StatusCode, code), (code, e.code(), e.details())
            return e
        raise AssertionError(f"expected {code}")

    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([images[1]], dtype=np.object_))
    for name in ("../../etc/passwd", "lite1/../x", "nope", "tf_efficientnet_lite0\x00"):
        expect("NOT_FOUND", lambda: client.infer(name, [inp]))
    expect("NOT_FOUND", lambda: client.infer("lite1", [inp], model_version="2"))
    expect("NOT_FOUND", lambda: client.is_model_ready("../lite1"))
    big = grpcclient.InferInput("image", [1], "BYTES")
    big.set_data_from_numpy(np.array([b"x" * (MAX_BODY_MB * 1024 * 1024 + 1)], dtype=np.object_))
    e = expect("OUT_OF_RANGE", lambda: client.infer("lite1", [big]))
    assert "message length too large" in e.message(), e.message()
    junk = grpcclient.InferInput("image", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    expect("INVALID_ARGUMENT", lambda: client.infer("lite1", [junk]))
    # Bytes that are not a ModelInferRequest at all.
    channel = grpc.insecure_channel(grpc_addr)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    for junk in (b"\xff\xff\xff\xff\x0f", b"\x0a\x80\x80\x80\x80\x10abc", os.urandom(4096)):
        try:
            raw(junk, timeout=10)
            raise AssertionError("a malformed message was accepted")
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT), e.code()
    channel.close()
    assert client.is_server_ready(), "the server goes on"
    result = client.infer("lite1", [inp])
    assert result.as_numpy("class_ids")[0][0] == 967
    print("gRPC hostile calls (unknown names with path characters, oversize, malformed): ok")


def check_grpc_keys(binary, weights_dir):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    proc, _, grpc_addr = start_server(
        [binary, "serve", "--model", "efficientnet_lite1", "--weights",
         os.path.join(weights_dir, "efficientnet-lite1-77cc7160.pth")],
        env={"CLASSIFY_API_KEYS": "k-one,k-two"})
    try:
        client = grpcclient.InferenceServerClient(url=grpc_addr)
        assert client.is_server_live() and client.is_server_ready(), "health stays open"
        assert client.is_model_ready("efficientnet_lite1"), "readiness stays open"
        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"\x89PNG"], dtype=np.object_))
        for headers in (None, {"authorization": "Bearer k-on"}, {"x-api-key": "k-three"}):
            for call in (lambda: client.infer("efficientnet_lite1", [inp], headers=headers),
                         lambda: client.get_model_metadata("efficientnet_lite1", headers=headers)):
                try:
                    call()
                    raise AssertionError(f"no refusal with {headers}")
                except InferenceServerException as e:
                    assert e.status() == "StatusCode.UNAUTHENTICATED", (headers, e.status())
        for headers in ({"authorization": "Bearer k-two"}, {"x-api-key": "k-one"}):
            meta = client.get_model_metadata("efficientnet_lite1", headers=headers)
            assert meta.name == "efficientnet_lite1"
            try:
                client.infer("efficientnet_lite1", [inp], headers=headers)
                raise AssertionError("a broken PNG was classified")
            except InferenceServerException as e:
                assert e.status() == "StatusCode.INVALID_ARGUMENT", e.status()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    print("gRPC API keys (none, wrong, right in either header; health open): ok")


def check_browser(addr, photos):
    from selenium.webdriver.support.ui import Select

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def browser(javascript):
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            opts.add_argument(a)
        if not javascript:
            opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)

    photo = os.path.abspath(os.path.join(photos, "coffee.png"))
    d = browser(javascript=True)
    try:
        d.get(f"http://{addr}/")
        picker = Select(d.find_element(By.ID, "model"))
        assert [o.text for o in picker.options] == MODELS
        picker.select_by_visible_text("lite1")
        d.find_element(By.ID, "file").send_keys(photo)
        WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "preview").get_attribute("hidden") is None)
        d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "label").text == "espresso")
        bars = d.find_elements(By.CSS_SELECTOR, "#result .bar")
        assert len(bars) == 5, len(bars)
        assert d.current_url.rstrip("/") == f"http://{addr}", "no page reload"
    finally:
        d.quit()
    print("browser upload with JavaScript: ok")

    d = browser(javascript=False)
    try:
        d.get(f"http://{addr}/")
        Select(d.find_element(By.ID, "model")).select_by_visible_text("lite1")
        d.find_element(By.ID, "file").send_keys(photo)
        d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "img.result"))
        assert d.find_element(By.ID, "label").text == "espresso"
        src = d.find_element(By.CSS_SELECTOR, "img.result").get_attribute("src")
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert "Model: lite1" in d.page_source
    finally:
        d.quit()
    print("browser form post without JavaScript: ok")


def main():
    import tempfile

    binary, weights_dir, photos = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as folder:
        models = write_models_file(os.path.abspath(weights_dir), folder)
        proc, addr, grpc_addr = start_server([binary, "serve", "--models-file", models])
        try:
            answers = check_kserve(addr, photos)
            check_grpc(grpc_addr, photos, answers)
            check_browser(addr, photos)
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0, "graceful shutdown exits 0"
    check_grpc_keys(binary, weights_dir)
    print("e2e: 6 passed, 0 failed")


if __name__ == "__main__":
    main()
