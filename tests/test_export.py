"""The export stage: a TensorFlow SavedModel that answers exactly as models/model.keras does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_pipeline import export, inference, paths
from mnist_pipeline.model import build_network, export_model
from mnist_pipeline.model_file import save_model
from mnist_pipeline.params import params_from_dict
from stages import export as export_stage

run_stage = export_stage.main


@pytest.fixture(scope="module")
def sample_pixels(sample_digits) -> tuple[np.ndarray, np.ndarray]:
    """625 real digits (every 8th of the bundled 5,000): raw pixels 0..255 and labels."""
    images, labels = sample_digits
    return images[::8].astype(np.float32), labels[::8]


@pytest.fixture(scope="module", params=[0, 4], ids=["plain", "test-time-shifts"])
def trained(request, tmp_path_factory, sample_pixels) -> Path:
    """A workspace whose models/model.keras is a small convnet trained for one epoch on the
    sample digits, saved plain and with test-time shifts (the averaging layers must survive
    the export too), with the test split; trained once per module and kind."""
    keras.utils.set_random_seed(0)
    network = build_network(params_from_dict(
        {"model": {"conv_filters": [8], "dense_units": 16}}).model)
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    pixels, labels = sample_pixels
    network.fit(pixels / 255.0, labels, epochs=1, batch_size=64, verbose=0)
    root = tmp_path_factory.mktemp(f"trained_{request.param}")
    save_model(export_model(network, request.param), root / paths.MODEL_FILE)
    (root / paths.PREPARED_DIR).mkdir(parents=True)
    np.save(root / paths.prepared_images("test"), (pixels[:200] / 255).astype(np.float32))
    np.save(root / paths.prepared_labels("test"), labels[:200])
    return root


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    """``trained`` after one run of the stage, in a folder of its own: read, never changed."""
    root = tmp_path_factory.mktemp("exported")
    shutil.copytree(trained, root, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run_stage()
    return root


@pytest.fixture
def workspace(trained, tmp_path, monkeypatch) -> Path:
    """A copy of ``trained`` that the test may change, as the working folder."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_saved_model_matches_the_keras_model(exported, sample_pixels):
    pixels, _labels = sample_pixels
    expected = inference.load_keras_model(exported / paths.MODEL_FILE).predict(pixels,
                                                                               verbose=0)
    served = tf.saved_model.load(str(exported / paths.SERVING_DIR))
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 28, 28]
    (output,) = signature(tf.constant(pixels)).values()
    np.testing.assert_allclose(output.numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(served.serve(tf.constant(pixels)).numpy(), expected,
                               atol=1e-5, rtol=0)
    assert expected.argmax(1).std() > 0  # a model that tells digits apart, not a constant


def test_a_rerun_replaces_the_folder_whole(exported, workspace):
    shutil.copytree(exported / paths.MODELS_DIR, paths.MODELS_DIR, dirs_exist_ok=True)
    (paths.SERVING_DIR / "stale.txt").write_text("from an older export")
    run_stage()
    assert not (paths.SERVING_DIR / "stale.txt").exists()
    assert (paths.SERVING_DIR / "saved_model.pb").is_file()
    assert sorted(path.name for path in paths.MODELS_DIR.iterdir()) == [
        "model.keras", "model.onnx", "serving"]
    # equal weights, equal bytes: this run's ONNX file is the first run's
    assert paths.ONNX_MODEL_FILE.read_bytes() == (exported / paths.ONNX_MODEL_FILE).read_bytes()


def test_a_missing_model_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^export: models/model.keras: model file not found"):
        run_stage()
    assert not paths.SERVING_DIR.exists() and not paths.ONNX_MODEL_FILE.exists()


def test_the_onnx_model_matches_the_keras_model_and_the_parity_is_recorded(exported,
                                                                           sample_pixels):
    pixels, _labels = sample_pixels
    expected = inference.load(exported / paths.MODEL_FILE).probabilities(pixels)
    answered = inference.load(exported / paths.ONNX_MODEL_FILE).probabilities(pixels)
    np.testing.assert_allclose(answered, expected, atol=1e-5, rtol=0)
    parity = json.loads((exported / paths.EXPORT_METRICS).read_text())
    assert set(parity) == {"onnx_max_difference", "onnx_label_agreement"}
    assert 0 <= parity["onnx_max_difference"] <= 1e-5 and parity["onnx_label_agreement"] == 1.0
    # readable names: what a user of onnxruntime alone sees
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported / paths.ONNX_MODEL_FILE))
    (feed,), (answer,) = session.get_inputs(), session.get_outputs()
    assert (feed.name, feed.shape, answer.name, answer.shape) == (
        "pixels", ["N", 28, 28], "probabilities", ["N", 10])


def test_an_onnx_model_beyond_the_tolerance_is_refused_and_removed(workspace, monkeypatch):
    """A conversion that changes the answers (here: a tolerance no float can meet, standing in
    for a broken converter) fails the stage and leaves no unchecked .onnx behind."""
    monkeypatch.setattr(export, "MAX_PROBABILITY_DIFFERENCE", -1.0)
    monkeypatch.setattr(export.check_parity, "__defaults__", (-1.0,))
    with pytest.raises(SystemExit, match=r"^export: models/model.onnx: the ONNX model's "
                                         r"probabilities differ .* \(tolerance -1;"):
        run_stage()
    assert not paths.ONNX_MODEL_FILE.exists() and not paths.EXPORT_METRICS.exists()


def test_parity_measures_the_largest_difference_and_label_agreement():
    keras_answers = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]], np.float32)
    onnx_answers = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], np.float32)
    parity = export.onnx_parity(keras_answers, onnx_answers)
    assert parity == {"onnx_max_difference": pytest.approx(0.2), "onnx_label_agreement":
                      pytest.approx(2 / 3, abs=1e-6)}
    with pytest.raises(export.ParityError, match="differ .* by up to 0.2"):
        export.check_parity(parity)
    export.check_parity(export.onnx_parity(keras_answers, keras_answers))


def test_a_model_loaded_from_its_file_exports_to_onnx_directly(workspace, tmp_path):
    """Keras refuses to export a model never called; a loaded one has not been."""
    export.save_onnx(inference.load_keras_model(paths.MODEL_FILE), tmp_path / "direct.onnx")
    assert inference.load(tmp_path / "direct.onnx").kind == "onnx"
