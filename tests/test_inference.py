"""mnist_pipeline.inference: one way to load and run a model file, .onnx or .keras.

The contract (pixels (N, 28, 28) 0..255 in, (N, 10) probabilities out) is checked on loading;
both kinds answer alike; the ONNX path runs without TensorFlow or Keras ever imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sample_data import SmallModel

from mnist_pipeline import inference


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_both_kinds_answer_as_the_keras_model_does(small_model: SmallModel, kind):
    path = small_model.onnx_path if kind == "onnx" else small_model.path
    classifier = inference.load(path)
    assert (classifier.kind, classifier.path) == (kind, path)
    expected = np.asarray(small_model.model(small_model.digits))
    for batch_size in (1, 7, 256):  # batches of every size, the last one short
        probabilities = classifier.probabilities(small_model.digits, batch_size)
        assert probabilities.dtype == np.float32 and probabilities.shape == (200, 10)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(probabilities.argmax(1), small_model.predicted)
    assert classifier.probabilities(np.zeros((0, 28, 28))).shape == (0, 10)
    with pytest.raises(ValueError, match=r"expected pixels of shape \(N, 28, 28\), got \(3, 784\)"):
        classifier.probabilities(np.zeros((3, 784)))


def test_the_default_model_is_the_onnx_one_when_it_exists(tmp_path):
    assert inference.default_model_path(tmp_path) == tmp_path / "model.keras"
    (tmp_path / "model.onnx").write_bytes(b"")
    assert inference.default_model_path(tmp_path) == tmp_path / "model.onnx"


@pytest.mark.parametrize("name, content, reason", [
    ("model.keras", b"", "not a loadable Keras model"),
    ("model.keras", b"PK\x03\x04 truncated zip", "not a loadable Keras model"),
    ("model.onnx", b"", "not a loadable ONNX model"),
    ("model.onnx", b"\x08\x07 not protobuf at all", "not a loadable ONNX model"),
    ("model.h5", b"", "expected a .onnx or .keras model file"),
])
def test_a_bad_model_file_is_one_line_naming_it(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(inference.ModelError) as caught:
        inference.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


@pytest.mark.parametrize("name", ["model.keras", "model.onnx"])
def test_a_missing_model_says_how_to_make_one(tmp_path, name):
    with pytest.raises(inference.ModelError, match="model file not found; run `dvc repro`"):
        inference.load(tmp_path / name)


def test_an_onnx_model_of_another_contract_is_refused(tmp_path):
    """A valid ONNX model that takes (N, 784) is not this project's model."""
    import keras

    other = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    other(np.zeros((1, 784), np.float32))
    other.export(str(tmp_path / "flat.onnx"), format="onnx", verbose=False)
    with pytest.raises(inference.ModelError,
                       match=r"flat.onnx: expected a model from float \(N, 28, 28\) pixels to "
                             r"\(N, 10\) probabilities, got \(\?, 784\) float -> \(\?, 10\) float"):
        inference.load(tmp_path / "flat.onnx")


ONNX_ONLY = """
import json, sys
import numpy as np
from mnist_pipeline import inference
classifier = inference.load(sys.argv[1])
probabilities = classifier.probabilities(np.zeros((3, 28, 28), np.float32) + 40)
heavy = sorted(name for name in sys.modules
               if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"))
print(json.dumps({"shape": list(probabilities.shape), "heavy": heavy}))
"""


def test_an_onnx_model_runs_without_tensorflow_or_keras(small_model: SmallModel):
    result = subprocess.run([sys.executable, "-c", ONNX_ONLY, str(small_model.onnx_path)],
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == {"shape": [3, 10], "heavy": []}
