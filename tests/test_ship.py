"""Shipping the winner: exports that agree with predict, int8, the model card, the server and its page,
and the Python API's input forms."""

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_class_folders
from transferlab.cli import main
from transferlab.core.errors import DataError, TransferlabError
from transferlab.inference import export
from transferlab.inference.backends import OnnxBackend, TorchBackend
from transferlab.inference.batching import MicroBatcher, load_in_model_thread
from transferlab.inference.classifier import TransferClassifier
from transferlab.inference.classify import pixels
from transferlab.inference.export import export_model
from transferlab.inference.predict import predict
from transferlab.inference.server import make_app


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A compare of features on an easy synthetic set (test_tiny), its data and its test files."""
    root = tmp_path_factory.mktemp("ship")
    data = make_class_folders(root / "data", n_per_class=14, n_classes=3)
    out = root / "out"
    assert main(["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "features",
                 "--out", str(out), "--max-epochs", "6", "--batch-size", "8", "--quiet"]) == 0
    from transferlab.data import load_dataset

    ds = load_dataset(data)
    test = np.load(out / "splits.npz")["test"]
    return data, out, [ds.paths[i] for i in test]


def test_onnx_gives_predicts_probabilities_and_unknown_scores(shipped):
    _, out, files = shipped
    done = export_model(out)
    side = json.loads((done.path.parent / "model.onnx.json").read_text())
    calibration = json.loads((out / "features" / "seed0" / "calibration.json").read_text())
    assert side["temperature"] == pytest.approx(calibration["temperature"]) and side["classes"]
    assert side["unknown"]["threshold"] is not None and done.max_abs_diff <= 1e-4
    backend = OnnxBackend(done.path)
    probs, scores = backend.run([np.asarray(Image.open(f).convert("RGB")) for f in files])
    expected = predict(out, files, top_k=3)
    want = np.array([[dict(r["top"])[c] for c in side["classes"]] for r in expected])
    assert np.abs(probs - want).max() < 1e-4
    assert np.abs(scores - np.array([r["unknown_score"] for r in expected])).max() < 1e-3
    # The graph takes uint8 pixels and normalises inside: raw logits are its second output.
    import onnxruntime as ort

    crops = pixels(files[:2], side["preprocessing"]["data_config"])
    p, logits, _ = ort.InferenceSession(str(done.path)).run(None, {"image": crops})
    assert np.allclose(torch.tensor(logits / side["temperature"]).softmax(-1).numpy(), p, atol=1e-5)


def test_the_example_script_answers_like_predict(shipped):
    _, out, files = shipped
    done = export_model(out)
    script = done.path.parent / "predict_with_onnx.py"
    run = subprocess.run([sys.executable, str(script), *map(str, files[:3])], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    got = [json.loads(line) for line in run.stdout.splitlines()]
    expected = predict(out, files[:3])
    assert [g["label"] for g in got] == [r["label"] for r in expected]
    assert np.allclose([g["prob"] for g in got], [r["prob"] for r in expected], atol=1e-4)


def test_int8_export_is_checked_against_test_accuracy(shipped, monkeypatch, tmp_path):
    _, out, _ = shipped
    done = export_model(out, out=tmp_path / "m.onnx", int8=True)
    assert done.int8_path.is_file() and (tmp_path / "m.int8.onnx.json").is_file()
    fp32, int8 = done.table
    assert int8["test_acc"] >= fp32["test_acc"] - export.INT8_MAX_DROP and int8["mb"] > 0 and int8["ms_per_image"] > 0
    monkeypatch.setattr(export, "INT8_MAX_DROP", -1.0)  # any accuracy is now a drop too many
    with pytest.raises(TransferlabError, match="int8 model's test accuracy"):
        export_model(out, out=tmp_path / "n.onnx", int8=True)
    assert not (tmp_path / "n.int8.onnx").exists()


def test_model_card_in_results_and_export_folders(shipped, tmp_path):
    _, out, _ = shipped
    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["strategy"] == "features" and card["model"]["backbone"] == "test_tiny"
    assert card["data"]["classes"] == ["class_0", "class_1", "class_2"] and card["data"]["fingerprint"]
    assert 0 <= card["scores"]["test_accuracy"] <= 1 and card["calibration"]["temperature"] > 0
    assert card["unknown_inputs"]["threshold"] is not None and card["reproduce"]["rerun"].endswith("config.yaml")
    assert any("test split has" in x for x in card["limitations"])
    interval = card["scores"]["test_accuracy_interval"]
    assert interval["low"] <= card["scores"]["test_accuracy"] <= interval["high"] and "Wilson" in interval["how"]
    md = (out / "MODEL_CARD.md").read_text()
    assert "## Limitations" in md and "## Reproduce" in md
    export_model(out, out=tmp_path / "x.onnx")
    assert json.loads((tmp_path / "model_card.json").read_text())["export"]["file"].endswith("x.onnx")


# --- the server


@pytest.fixture(scope="module")
def client(shipped):
    from starlette.testclient import TestClient

    _, out, _ = shipped
    backend, thread = load_in_model_thread(lambda: TorchBackend(out))  # as `transferlab serve` loads it
    with TestClient(make_app(backend, max_batch=8, window_ms=20, executor=thread)) as c:
        yield c


def _png(path) -> bytes:
    return path.read_bytes()


def test_server_answers_like_predict(client, shipped):
    _, out, files = shipped
    expected = predict(out, files[:2], top_k=3)
    r = client.post("/predict?top_k=3", files=[("file", (f.name, _png(f), "image/png")) for f in files[:2]])
    assert r.status_code == 200
    got = r.json()["predictions"]
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert np.allclose([g["prob"] for g in got], [e["prob"] for e in expected], atol=1e-5)
    r = client.post("/predict", json={"images": [base64.b64encode(_png(files[0])).decode()]})
    assert r.json()["predictions"][0]["label"] == expected[0]["label"]
    r = client.post("/predict?explain=1", json={"image": "data:image/png;base64," + base64.b64encode(
        _png(files[0])).decode()})
    assert r.json()["predictions"][0]["gradcam"].startswith("data:image/png;base64,")
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/model").json()
    assert card["serving"]["classes"] == ["class_0", "class_1", "class_2"] and card["model"]["strategy"] == "features"
    assert 'id="file"' in client.get("/").text


def test_server_refuses_bad_requests_with_json_errors(client, shipped):
    _, _, files = shipped
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (60000).to_bytes(4, "big") * 2 + b"\x08\x02\0\0\0") + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")  # declares 60000 x 60000 RGB
    cases = [
        client.post("/predict", content=b""),
        client.post("/predict", files={"file": ("a.txt", b"just text", "text/plain")}),
        client.post("/predict", files={"file": ("big.png", header, "image/png")}),
        client.post("/predict", content=b"x" * (21 * 2**20), headers={"content-type": "application/json"}),
        client.post("/predict", content=b"--zz\r\nContent-Disposition: form-da",
                    headers={"content-type": "multipart/form-data; boundary=zz"}),
        client.post("/predict", data={"file": "/etc/passwd"}),
        client.post("/predict", json={"images": ["/etc/passwd"]}),
        client.post("/predict", json={"images": [base64.b64encode(_png(files[0])).decode()] * 65}),
        client.post("/predict", json=[1, 2]),
        client.post("/predict?top_k=x", json={"image": ""}),
        client.get("/nowhere"),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
        assert r.json()["error"]
    assert "passwd" not in cases[5].text or "not a file" in cases[5].json()["error"]
    assert cases[2].status_code == 413 and cases[3].status_code == 413 and cases[7].status_code == 413
    assert client.get("/health").status_code == 200  # still answering


def test_micro_batching_gives_every_request_its_own_rows():
    seen = []

    def double(items):
        seen.append(len(items))
        time.sleep(0.01)
        return [2 * x for x in items]

    async def scenario():
        batcher = MicroBatcher(double, max_batch=16, window_s=0.05)
        await batcher.start()
        got = await asyncio.gather(*[batcher.submit([k, k + 100]) for k in range(10)])
        await batcher.stop()
        return got

    got = asyncio.run(scenario())
    assert got == [[2 * k, 2 * (k + 100)] for k in range(10)]
    assert len(seen) < 10 and max(seen) <= 16 + 1  # batched, and no batch far above the limit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_in_headless_chromium(shipped):
    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no Chromium with chromedriver here (apt install chromium chromium-driver; .ci/run does)")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, out, files = shipped
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(TorchBackend(out)), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        chrome.get(f"http://127.0.0.1:{port}/")
        chrome.find_element(By.ID, "file").send_keys(str(files[0]))
        WebDriverWait(chrome, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                        in ("done", "error"))
        assert chrome.find_element(By.ID, "error").text == ""
        shown = chrome.find_element(By.CSS_SELECTOR, "#results .label").text
        assert shown == predict(out, files[:1])[0]["label"]
        WebDriverWait(chrome, 30).until(lambda d: "classes" in d.find_element(By.ID, "about").text)
    finally:
        chrome.quit()
        server.should_exit = True
        thread.join(10)


# --- the Python API's inputs


def test_api_takes_paths_images_arrays_and_tensors(shipped):
    _, out, files = shipped
    clf = TransferClassifier.load(out)
    assert clf.winner_ == "features" and clf.get_params()["backbone"] == "test_tiny" and "features" in clf.scores_
    assert clf.report_ is not None and clf.report_.is_file()
    f = files[0]
    rgb = np.asarray(Image.open(f).convert("RGB"))
    want = clf.predict_proba([f])[0]
    forms = {"path string": str(f), "Path": f, "PIL": Image.open(f), "HWC uint8": rgb,
             "CHW float tensor": torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255,
             "HWC float array": rgb / 255.0, "RGBA": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
             "batch": rgb[None]}
    for name, x in forms.items():
        got = clf.predict_proba(x)
        assert got.shape == (1, 3) and np.abs(got[0] - want).max() < 1e-3, name
    assert clf.predict(str(f)).shape == (1,)
    grey = clf.predict_proba(rgb.mean(2).astype(np.uint8))
    assert grey.shape == (1, 3)
    assert clf.predict([f, rgb]).shape == (2,)
    with pytest.raises(DataError, match="0..1"):
        clf.predict_proba(rgb.astype(np.float32) - 100)  # a normalised image, not pixels


def test_api_refuses_missing_labels_and_predicting_unfitted(shipped):
    from sklearn.exceptions import NotFittedError

    data, _, _ = shipped
    files = sorted(data.rglob("*.png"))[:4]
    with pytest.raises(TransferlabError, match="row 2"):
        TransferClassifier(strategy="probe").fit(files, ["a", "b", float("nan"), "a"])
    with pytest.raises(TransferlabError, match="has no column"):
        TransferClassifier(strategy="probe").fit({"file": files, "y": [1, 2, 3, 4]}, label="y")
    with pytest.raises(NotFittedError):
        TransferClassifier().predict([files[0]])


def test_compare_ends_with_the_report_the_time_and_the_next_commands(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", n_per_class=8, n_classes=2)
    out = tmp_path / "out"
    assert main(["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "features,probe",
                 "--out", str(out), "--max-epochs", "2", "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    assert "run 1 of 2: features" in captured.err and "run 2 of 2: probe" in captured.err
    lines = captured.out.splitlines()
    report = next(line for line in lines if line.startswith("report: "))
    assert str((out / "report.html").resolve()) in report and "took" in report
    # One line however long (piped output is not wrapped at 80 columns).
    nxt = next(line for line in lines if line.startswith("next: "))
    assert f"transferlab predict {out}" in nxt and f"transferlab serve {out}" in nxt and len(nxt) > 80
    # The report opens with the same: the winner, its score with an interval, and the commands.
    winner = json.loads((out / "metrics.json").read_text())["winner"]
    top = (out / "report.md").read_text().split("\n## ")[1]
    assert top.startswith("Winner") and f"{winner} on test_tiny: test accuracy" in top and "95% interval" in top
    assert all(command in top for command in nxt.removeprefix("next: ").split("  |  "))
    assert "<div class='box'><h2>Winner</h2>" in (out / "report.html").read_text()
