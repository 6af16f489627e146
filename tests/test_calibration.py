"""Calibration: the temperature fit, the model that carries it, and the ECE / reliability data."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from mnist_pipeline import calibration, inference, paths, uncertainty
from mnist_pipeline.metrics import expected_calibration_error, reliability_table
from mnist_pipeline.model import build_network, export_logits, export_model
from mnist_pipeline.model_file import save_model
from mnist_pipeline.params import ModelParams
from stages import export as export_stage

SMALL = ModelParams(conv_filters=(4,), dense_units=16)


def _sampled(temperature: float, count: int = 4000, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / temperature): a model whose honest
    temperature is ``temperature``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (count, 10))
    probabilities = calibration.averaged_probabilities(logits, temperature)
    labels = np.array([rng.choice(10, p=row) for row in probabilities])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_the_fit_finds_the_temperature_the_labels_were_drawn_with(true_temperature):
    logits, labels = _sampled(true_temperature)
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted.temperature == pytest.approx(true_temperature, rel=0.1)
    assert fitted.temperature == round(fitted.temperature, calibration.TEMPERATURE_DECIMALS)
    assert fitted.nll_after < fitted.nll_before
    # a minimum: either side is worse
    for other in (fitted.temperature * 0.8, fitted.temperature * 1.25):
        assert calibration.negative_log_likelihood(logits, labels, other) > fitted.nll_after
    assert calibration.fit_temperature(logits, labels) == fitted  # deterministic


def test_a_small_split_without_errors_does_not_make_the_model_certain():
    """250 digits all right: the plain NLL falls all the way to the smallest T (certainty);
    the pseudo-count stops short of it."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 250)
    logits = rng.normal(0, 1, (5, 250, 10))
    logits[:, np.arange(250), labels] += 4.0  # every copy right
    plain = [calibration.negative_log_likelihood(logits, labels, t) for t in (0.05, 0.5, 1.0)]
    assert plain[0] < plain[1] < plain[2]
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted.temperature > 2 * calibration.MIN_TEMPERATURE
    confidence = calibration.averaged_probabilities(logits, fitted.temperature).max(1).mean()
    assert 0.95 < confidence < 0.999


def test_averaged_probabilities_are_the_mean_softmax_of_the_copies():
    logits = np.random.default_rng(1).normal(0, 4, (3, 5, 10))
    averaged = calibration.averaged_probabilities(logits, 2.0)
    manual = np.mean([np.exp(z / 2) / np.exp(z / 2).sum(axis=1, keepdims=True) for z in logits],
                     axis=0)
    np.testing.assert_allclose(averaged, manual, rtol=1e-12)
    # one copy: the temperature changes no label
    for temperature in (0.3, 1.0, 7.0):
        np.testing.assert_array_equal(
            calibration.averaged_probabilities(logits[0], temperature).argmax(1),
            logits[0].argmax(1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        calibration.averaged_probabilities(logits, 0.0)
    with pytest.raises(ValueError, match="no validation digits"):
        calibration.fit_temperature(np.zeros((0, 10)), np.zeros(0, np.int64))


@pytest.fixture(scope="module")
def trained(sample_digits):
    """A small convnet fitted for one epoch on 1,000 real digits, and 300 other digits."""
    images, labels = sample_digits
    keras.utils.set_random_seed(0)
    network = build_network(SMALL)
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    network.fit(images[::5] / 255.0, labels[::5], epochs=1, batch_size=64, verbose=0)
    return network, images[2::16][:300].astype(np.float32), labels[2::16][:300]


@pytest.mark.parametrize("shifts", [0, 4])
def test_the_saved_model_answers_with_the_fitted_temperature(trained, shifts, tmp_path):
    network, pixels, labels = trained
    logits = export_logits(network, shifts).predict(pixels, verbose=0)
    logits = np.stack(logits) if isinstance(logits, list) else logits
    assert logits.shape == (1 + shifts, len(labels), 10) or (shifts == 0 and
                                                             logits.shape == (len(labels), 10))
    fitted = calibration.fit_temperature(logits, labels)
    save_model(export_model(network, shifts, fitted.temperature), tmp_path / "model.keras")
    loaded = inference.load(tmp_path / "model.keras")  # safe mode: built-in layers only
    answered = loaded.probabilities(pixels)
    np.testing.assert_allclose(answered, calibration.averaged_probabilities(
        logits, fitted.temperature), atol=1e-5)
    # the temperature is one layer, shared by every copy; the weights are the network's
    assert [layer.name for layer in loaded.native.layers].count("temperature") == 1
    assert loaded.native.count_params() == network.count_params()
    plain = export_model(network, shifts).predict(pixels, verbose=0)
    np.testing.assert_allclose(plain, calibration.averaged_probabilities(logits), atol=1e-5)
    if shifts == 0:
        np.testing.assert_array_equal(answered.argmax(1), plain.argmax(1))


def test_the_export_keeps_the_temperature(trained, tmp_path, monkeypatch):
    """SavedModel and ONNX of a calibrated model with shifts answer as the .keras file."""
    import tensorflow as tf

    network, pixels, labels = trained
    monkeypatch.chdir(tmp_path)
    save_model(export_model(network, 4, temperature=0.37), paths.MODEL_FILE)
    paths.PREPARED_DIR.mkdir(parents=True)
    np.save(paths.prepared_images("test"), (pixels / 255).astype(np.float32))
    np.save(paths.prepared_labels("test"), labels)
    export_stage.main()
    expected = inference.load(paths.MODEL_FILE).probabilities(pixels)
    # the temperature did something: sharper than the uncalibrated model
    uncalibrated = export_model(network, 4).predict(pixels, verbose=0)
    assert expected.max(1).mean() > uncalibrated.max(1).mean() + 0.01
    np.testing.assert_allclose(inference.load(paths.ONNX_MODEL_FILE).probabilities(pixels),
                               expected, atol=1e-5)
    served = tf.saved_model.load(str(paths.SERVING_DIR))
    np.testing.assert_allclose(served.serve(tf.constant(pixels)).numpy(), expected, atol=1e-5)
    assert json.loads(paths.EXPORT_METRICS.read_text())["onnx_label_agreement"] == 1.0


def test_a_temperature_must_be_positive(trained):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        export_model(trained[0], 0, temperature=-1.0)


# --- ECE and the reliability diagram --------------------------------------------------------

def test_reliability_table_and_ece_by_hand():
    # confidences 0.95 and 1.0 (right) fall in the last bin (0.933, 1]; 0.62 and 0.64 (both
    # wrong) in bin 10 (0.6, 0.667]; 0.6 exactly (right) in bin 9 (0.533, 0.6]
    probabilities = np.array([[0.95, 0.05], [0.0, 1.0], [0.62, 0.38], [0.36, 0.64], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0, 0])
    table = reliability_table(labels, probabilities)
    assert list(table.columns) == ["bin", "confidence", "accuracy", "count"]
    assert table.to_dict("list") == {
        "bin": [pytest.approx(9 / 15, abs=1e-6), pytest.approx(10 / 15, abs=1e-6), 1.0],
        "confidence": [pytest.approx(0.6), pytest.approx(0.63), pytest.approx(0.975)],
        "accuracy": [1.0, 0.0, 1.0], "count": [1, 2, 2]}
    expected = (1 * 0.4 + 2 * 0.63 + 2 * 0.025) / 5
    assert expected_calibration_error(labels, probabilities) == pytest.approx(expected)


def test_ece_is_zero_when_confidence_is_accuracy_and_large_when_not():
    rng = np.random.default_rng(0)
    # 80% confident everywhere and right 80% of the time
    labels = rng.integers(0, 10, 10_000)
    right = rng.random(10_000) < 0.8
    predicted = np.where(right, labels, (labels + 1) % 10)
    probabilities = np.full((10_000, 10), 0.2 / 9)
    probabilities[np.arange(10_000), predicted] = 0.8
    assert expected_calibration_error(labels, probabilities) < 0.01
    # the model of the issue, nearly: always right, saying 0.90
    always_right = np.full((10_000, 10), 0.1 / 9)
    always_right[np.arange(10_000), labels] = 0.9
    assert expected_calibration_error(labels, always_right) == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        expected_calibration_error(labels[:5], probabilities)
    assert expected_calibration_error(labels[:0], probabilities[:0]) == 0.0


def test_the_same_network_and_temperature_give_the_same_bytes(trained, tmp_path):
    network = trained[0]
    for name in ("first", "second"):  # two builds of the model, as two train runs make
        save_model(export_model(network, 4, temperature=0.5392), tmp_path / f"{name}.keras")
    assert (tmp_path / "first.keras").read_bytes() == (tmp_path / "second.keras").read_bytes()


# --- the uncertain threshold, fitted with the temperature and carried by the model ---------

def test_calibrate_network_fits_the_temperature_and_the_threshold(trained):
    network, pixels, labels = trained
    fitted = calibration.calibrate_network(network, 4, ((pixels / 255).astype(np.float32), labels))
    logits = np.stack(export_logits(network, 4).predict(pixels, verbose=0))
    assert fitted.temperature == calibration.fit_temperature(logits, labels).temperature
    probabilities = calibration.averaged_probabilities(logits, fitted.temperature)
    assert fitted.min_confidence in uncertainty.CANDIDATE_THRESHOLDS
    assert fitted.min_confidence == uncertainty.fit_min_confidence({"val": (probabilities,
                                                                            labels)})
    flagged = uncertainty.flagged_right_share(probabilities, labels, fitted.min_confidence)
    assert flagged <= uncertainty.MAX_FLAGGED_RIGHT or fitted.min_confidence == 0.5
    # by source: the threshold spares the right answers of each part
    halves = {"first": np.arange(150), "second": np.arange(150, 300)}
    by_source = calibration.fit(logits, labels, halves)
    for rows in halves.values():
        assert uncertainty.flagged_right_share(
            probabilities[rows], labels[rows],
            by_source.min_confidence) <= uncertainty.MAX_FLAGGED_RIGHT or (
                by_source.min_confidence == 0.5)
    assert by_source.min_confidence <= max(
        uncertainty.fit_min_confidence({"one": (probabilities[rows], labels[rows])})
        for rows in halves.values())


def test_every_model_file_carries_its_threshold(trained, tmp_path, monkeypatch):
    """.keras, ONNX (metadata_props) and SavedModel keep the threshold; the answers are
    unchanged by it; predict's classifier flags with it."""
    import onnx
    import tensorflow as tf

    network, pixels, labels = trained
    monkeypatch.chdir(tmp_path)
    save_model(export_model(network, 4, 0.5, min_confidence=0.7), paths.MODEL_FILE)
    paths.PREPARED_DIR.mkdir(parents=True)
    np.save(paths.prepared_images("test"), (pixels / 255).astype(np.float32))
    np.save(paths.prepared_labels("test"), labels)
    export_stage.main()
    keras_model = inference.load(paths.MODEL_FILE)
    assert keras_model.min_confidence == 0.7
    np.testing.assert_array_equal(  # the threshold layer is the identity
        keras_model.probabilities(pixels),
        export_model(network, 4, 0.5, min_confidence=0.95).predict(pixels, verbose=0))
    onnx_model = inference.load(paths.ONNX_MODEL_FILE)
    assert onnx_model.min_confidence == 0.7
    assert {prop.key: prop.value for prop in onnx.load_model(
        paths.ONNX_MODEL_FILE).metadata_props} == {uncertainty.METADATA_KEY: "0.7"}
    np.testing.assert_allclose(onnx_model.probabilities(pixels),
                               keras_model.probabilities(pixels), atol=1e-5)
    saved = json.loads((paths.SERVING_DIR / "assets.extra/mnist_pipeline.json").read_text())
    assert saved == {"min_confidence": 0.7}
    served = tf.saved_model.load(str(paths.SERVING_DIR))
    np.testing.assert_allclose(served.serve(tf.constant(pixels)).numpy(),
                               keras_model.probabilities(pixels), atol=1e-5)

    # an older file without a threshold: the default; a forged one: refused
    proto = onnx.load_model(paths.ONNX_MODEL_FILE)
    del proto.metadata_props[:]
    onnx.save_model(proto, tmp_path / "old.onnx")
    assert inference.load(tmp_path / "old.onnx").min_confidence == uncertainty.MIN_CONFIDENCE
    onnx.helper.set_model_props(proto, {uncertainty.METADATA_KEY: "1.5"})
    onnx.save_model(proto, tmp_path / "forged.onnx")
    with pytest.raises(inference.ModelError, match=r"forged\.onnx: the model's uncertain "
                                                   r"threshold '1\.5' is not a number"):
        inference.load(tmp_path / "forged.onnx")
    old = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                            keras.layers.Dense(10, activation="softmax")])
    assert inference.from_keras_model(old).min_confidence == uncertainty.MIN_CONFIDENCE
    with pytest.raises(ValueError, match=r"min_confidence must be in \(0, 1\)"):
        export_model(network, 0, min_confidence=1.0)
