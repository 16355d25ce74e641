"""End-to-end checks of `classify serve` with real clients, run by scripts/test after
`cargo test`:

1. KServe / Triton Open Inference Protocol v2 with the official `tritonclient[http]`
   client, both binary-tensor and JSON (base64) requests.
2. A real browser (Debian's headless Chromium via Selenium) on the upload page: with
   JavaScript (preview + fetch + bars) and without (plain form post, result page).

Usage: python scripts/e2e.py BINARY WEIGHTS PHOTOS_DIR
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


def start_server(binary, weights):
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--model", "tf_efficientnet_lite0", "--weights", weights,
         "--interpolation", "bilinear", "--mean", "0.49803922,0.49803922,0.49803922",
         "--std", "0.5019608,0.5019608,0.5019608"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    line = proc.stderr.readline()
    m = re.match(r"classify: listening on http://(\S+)", line)
    assert m, f"unexpected first line: {line!r}"
    addr = m.group(1)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://{addr}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, addr
        except Exception:
            time.sleep(0.1)
    raise SystemExit("server never became ready")


def check_kserve(addr, photos):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=addr)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tf_efficientnet_lite0")
    meta = client.get_model_metadata("tf_efficientnet_lite0")
    assert meta["inputs"][0]["datatype"] == "BYTES", meta

    # The versioned routes, as tritonclient addresses them with model_version.
    assert client.is_model_ready("tf_efficientnet_lite0", model_version="1")
    assert client.get_model_metadata("tf_efficientnet_lite0", model_version="1")["versions"] == ["1"]

    images = [open(os.path.join(photos, n), "rb").read() for n in ("rocket.jpg", "coffee.png")]
    for binary, version in ((True, ""), (False, "1")):
        data = np.array(images if binary else [base64.b64encode(i) for i in images], dtype=np.object_)
        inp = httpclient.InferInput("image", [len(images)], "BYTES")
        inp.set_data_from_numpy(data, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=False)
                   for n in ("class_ids", "probabilities", "labels")]
        result = client.infer("tf_efficientnet_lite0", [inp], model_version=version,
                              outputs=outputs, parameters={"top_k": 3})
        ids = result.as_numpy("class_ids")
        probs = result.as_numpy("probabilities")
        labels = result.as_numpy("labels")
        assert ids.shape == (2, 3), ids.shape
        assert ids[0][0] == 657 and ids[1][0] == 967, ids
        assert probs[1][0] > 0.9, probs
        label = labels[1][0]
        label = label.decode() if isinstance(label, bytes) else label
        assert label == "espresso", labels
    print("kserve v2 with tritonclient (unversioned and model_version=1): ok")


def check_browser(addr, photos):
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
        d.find_element(By.ID, "file").send_keys(photo)
        d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(d, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "img.result"))
        assert d.find_element(By.ID, "label").text == "espresso"
        src = d.find_element(By.CSS_SELECTOR, "img.result").get_attribute("src")
        assert src.startswith("data:image/png;base64,"), src[:40]
    finally:
        d.quit()
    print("browser form post without JavaScript: ok")


def main():
    binary, weights, photos = sys.argv[1:4]
    proc, addr = start_server(binary, weights)
    try:
        check_kserve(addr, photos)
        check_browser(addr, photos)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, "graceful shutdown exits 0"
    print("e2e: 3 passed, 0 failed")


if __name__ == "__main__":
    main()
