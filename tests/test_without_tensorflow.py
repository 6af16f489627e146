"""predict and serve on the ONNX model need neither TensorFlow nor Keras.

In this environment (everything installed) the commands must not import them; and in an
environment built as the README says, `pip install -c requirements.lock '.[serve]'`, where
TensorFlow is not even installed, both commands run on a copied `model.onnx`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sample_data import SmallModel

PROJECT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf_keras", "tf2onnx", "jax", "torch")

IMPORTS_AFTER = """
import json, sys
from mnist_pipeline.app import cli
status = cli.main(sys.argv[1:])
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))
print(json.dumps({{"status": status, "heavy": heavy}}), file=sys.stderr)
"""

SERVE_APP_IMPORTS = """
import json, sys
from fastapi.testclient import TestClient
from mnist_pipeline.app import api
bar = [[0] * 28] * 10 + [[0] * 10 + [255] * 8 + [0] * 10] * 8 + [[0] * 28] * 10
with TestClient(api.create_app(sys.argv[1])) as client:
    answer = client.post("/predict", json={{"pixels": bar}})
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))
print(json.dumps({{"status": answer.status_code, "heavy": heavy}}))
"""


@pytest.fixture
def digit_png(small_model: SmallModel, tmp_path: Path) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(small_model.digits[0].astype(np.uint8)).save(path)
    return path


def test_predict_on_the_onnx_model_imports_no_tensorflow(small_model: SmallModel, digit_png,
                                                         tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER.format(heavy=HEAVY), "predict", "--model",
         str(small_model.onnx_path), str(digit_png)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"status": 0, "heavy": []}, result.stderr[-2000:]
    header, row = result.stdout.splitlines()[:2]
    assert header.startswith("input,index,label,confidence")
    assert row.split(",")[2] == str(small_model.predicted[0])


def test_the_default_model_is_the_onnx_file_when_both_exist(small_model: SmallModel,
                                                           digit_png, tmp_path):
    (tmp_path / "models").mkdir()
    shutil.copy(small_model.path, tmp_path / "models" / "model.keras")
    shutil.copy(small_model.onnx_path, tmp_path / "models" / "model.onnx")
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER.format(heavy=HEAVY), "predict", str(digit_png)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert json.loads(result.stderr.strip().splitlines()[-1]) == {"status": 0, "heavy": []}


def test_serve_on_the_onnx_model_imports_no_tensorflow(small_model: SmallModel):
    result = subprocess.run(
        [sys.executable, "-c", SERVE_APP_IMPORTS.format(heavy=HEAVY), str(small_model.onnx_path)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"status": 200, "heavy": []}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_json(url: str, document: object) -> dict:
    request = urllib.request.Request(url, data=json.dumps(document).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_predict_and_serve_in_an_install_without_tensorflow(small_model: SmallModel,
                                                           digit_png, tmp_path):
    """The README's serve-only install, in a new virtual environment: no TensorFlow in it,
    and predict and serve answer on a copied model.onnx as they do here."""
    source = tmp_path / "source"  # a copy: building the package writes build/ into its tree
    shutil.copytree(PROJECT / "mnist_pipeline", source / "mnist_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "requirements.lock"):
        shutil.copy(PROJECT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(source / "requirements.lock"), f"{source}[serve]"],
        capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True,
                           text=True, timeout=60)
    assert "No module named 'tensorflow'" in probe.stderr
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True,
                            text=True, timeout=60).stdout.lower()
    assert "keras" not in frozen and "tensorflow" not in frozen

    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    shutil.copy(small_model.onnx_path, work / "models" / "model.onnx")
    command = str(venv / "bin" / "mnist-pipeline")
    predicted = subprocess.run([command, "predict", str(digit_png)], capture_output=True,
                               text=True, timeout=120, cwd=work)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.splitlines()[1].split(",")[2] == str(small_model.predicted[0])

    port = free_port()
    server = subprocess.Popen([command, "serve", "--port", str(port)], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer /health in 60 s"
                time.sleep(0.1)
        assert health["model"] == str(Path("models") / "model.onnx")
        digits = small_model.digits[:3].astype(int).tolist()
        answer = post_json(f"{url}/v1/models/mnist:predict", {"instances": digits})
        np.testing.assert_array_equal(np.argmax(answer["predictions"], axis=1),
                                      small_model.predicted[:3])
        with urllib.request.urlopen(f"{url}/", timeout=10) as response:
            assert b"<canvas" in response.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if os.environ.get("KEEP_SERVE_VENV"):  # for measuring by hand: benchmarks/README.md
        print(venv)
