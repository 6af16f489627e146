"""The export stage: a TensorFlow SavedModel that answers exactly as models/model.keras does."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_pipeline import paths
from mnist_pipeline.model import build_network, export_model, load_model, save_model
from mnist_pipeline.params import params_from_dict
from stages import export as export_stage

run_stage = export_stage.main


@pytest.fixture(scope="module")
def sample_pixels(sample_digits) -> tuple[np.ndarray, np.ndarray]:
    """625 real digits (every 8th of the bundled 5,000): raw pixels 0..255 and labels."""
    images, labels = sample_digits
    return images[::8].astype(np.float32), labels[::8]


@pytest.fixture(params=[0, 4], ids=["plain", "test-time-shifts"])
def workspace(request, tmp_path, monkeypatch, sample_pixels) -> Path:
    """models/model.keras: a small convnet trained for one epoch on the sample digits, saved
    plain and with test-time shifts (the averaging layers must survive the export too)."""
    keras.utils.set_random_seed(0)
    network = build_network(params_from_dict(
        {"model": {"conv_filters": [8], "dense_units": 16}}).model)
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pixels, labels = sample_pixels
    network.fit(pixels / 255.0, labels, epochs=1, batch_size=64, verbose=0)
    monkeypatch.chdir(tmp_path)
    save_model(export_model(network, request.param), paths.MODEL_FILE)
    return tmp_path


def test_saved_model_matches_the_keras_model(workspace, sample_pixels):
    run_stage()
    pixels, _labels = sample_pixels
    expected = load_model(paths.MODEL_FILE).predict(pixels, verbose=0)
    served = tf.saved_model.load(str(paths.SERVING_DIR))
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 28, 28]
    (output,) = signature(tf.constant(pixels)).values()
    np.testing.assert_allclose(output.numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(served.serve(tf.constant(pixels)).numpy(), expected,
                               atol=1e-5, rtol=0)
    assert expected.argmax(1).std() > 0  # a model that tells digits apart, not a constant


def test_a_rerun_replaces_the_folder_whole(workspace):
    run_stage()
    (paths.SERVING_DIR / "stale.txt").write_text("from an older export")
    run_stage()
    assert not (paths.SERVING_DIR / "stale.txt").exists()
    assert (paths.SERVING_DIR / "saved_model.pb").is_file()
    assert sorted(path.name for path in paths.MODELS_DIR.iterdir()) == ["model.keras", "serving"]


def test_a_missing_model_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^export: models/model.keras: missing"):
        run_stage()
    assert not paths.SERVING_DIR.exists()
