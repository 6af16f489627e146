"""`uncertain`: real digits pass; non-digits and unsure answers are flagged (predict, serve)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mnist_pipeline import uncertainty
from mnist_pipeline.app import api, predict

CONFIDENT = np.eye(10)[[3]] * 0.98 + 0.002  # a sure "3"


def sure(count: int) -> np.ndarray:
    return np.repeat(CONFIDENT, count, axis=0)


def test_real_digits_look_like_digits(sample_digits):
    images, _labels = sample_digits
    looks = uncertainty.looks_like_a_digit(images)
    assert looks.mean() >= 0.998  # the pixel rules alone flag at most 0.2% of real digits
    assert not uncertainty.uncertain(images[:200], sure(200)).any()


def test_noise_blank_and_gray_pages_are_not_digits():
    rng = np.random.default_rng(0)
    inputs = {
        "uniform noise": rng.uniform(0, 255, (200, 28, 28)),
        "blank": np.zeros((3, 28, 28)),
        "faint": np.full((3, 28, 28), 0.01),  # a total ink of 0.03
        "gray page": np.full((3, 28, 28), 90.0),
        "white page": np.full((3, 28, 28), 255.0),
    }
    for name, pixels in inputs.items():
        flagged = uncertainty.uncertain(pixels, sure(len(pixels)))  # however sure the model
        assert flagged.all(), name


def test_ink_up_to_the_edge_is_not_a_digit(sample_digits):
    digit = sample_digits[0][:1].astype(np.float32)
    framed = digit.copy()
    framed[:, :, :2] = 255  # a bar down the left edge
    assert uncertainty.looks_like_a_digit(digit).all()
    assert not uncertainty.looks_like_a_digit(framed).any()
    features = uncertainty.pixel_features(framed)
    assert features["frame_share"][0] > uncertainty.MAX_FRAME_SHARE


def test_an_unsure_answer_is_uncertain(sample_digits):
    digits = sample_digits[0][:2].astype(np.float32)
    split = np.full((2, 10), 0.02)
    split[:, 3] = split[:, 5] = 0.42  # a 3 or a 5: below MIN_CONFIDENCE
    split[1] = (1 - uncertainty.MIN_CONFIDENCE) / 9
    split[1, 3] = uncertainty.MIN_CONFIDENCE  # just sure enough
    np.testing.assert_array_equal(uncertainty.uncertain(digits, split), [True, False])
    with pytest.raises(ValueError, match="probabilities of shape"):
        uncertainty.uncertain(digits, split[:1])
    with pytest.raises(ValueError, match="expected pixels"):
        uncertainty.pixel_features(np.zeros((2, 784)))
    assert uncertainty.uncertain(np.zeros((0, 28, 28)), np.zeros((0, 10))).shape == (0,)


def test_the_module_needs_numpy_only():
    code = ("import sys, mnist_pipeline.uncertainty; "
            "print(sorted(m for m in ('scipy', 'tensorflow', 'keras', 'PIL', 'pandas') "
            "if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert imported == "[]"


def test_predict_rows_and_csv_say_uncertain(sample_digits):
    digit = sample_digits[0][:1].astype(np.float32)
    noise = np.random.default_rng(1).uniform(0, 255, (1, 28, 28)).astype(np.float32)
    inputs = [predict.LoadedInput("digit.npy", digit), predict.LoadedInput("noise.npy", noise)]
    rows = predict.prediction_rows(inputs, sure(2))
    assert [row[4] for row in rows] == [False, True]
    assert predict.format_csv(rows).splitlines()[1:] == ["digit.npy,0,3,0.9820,false",
                                                     "noise.npy,0,3,0.9820,true"]


def test_serve_answers_uncertain(small_model):
    noise = np.random.default_rng(2).uniform(0, 255, (28, 28)).round().tolist()
    digits = np.asarray(small_model.digits[:3]).round().tolist()
    with TestClient(api.create_app(small_model.onnx_path)) as client:
        one = client.post("/predict", json={"pixels": noise})
        batch = client.post("/predict", json={"pixels": digits})
        schema = client.get("/openapi.json").json()
    assert one.status_code == 200 and one.json()["uncertain"] is True
    answers = batch.json()["predictions"]
    assert [answer["uncertain"] for answer in answers] == [
        answer["confidence"] < uncertainty.MIN_CONFIDENCE for answer in answers]
    assert "uncertain" in schema["components"]["schemas"]["Prediction"]["properties"]


def test_a_noisy_picture_made_mnist_style_is_many_marks_not_a_digit(sample_digits):
    """Uniform noise uploaded as a picture is cropped and fitted into 20x20 like a digit:
    its bright and frame shares then look like a digit's, its dozens of specks do not."""
    from mnist_pipeline.digit_image import normalize_digit

    rng = np.random.default_rng(3)
    noise = np.stack([normalize_digit(rng.uniform(0, 255, (28, 28)).astype(np.float32),
                                      "never") for _ in range(20)])
    features = uncertainty.pixel_features(noise)
    assert (features["lit_share"] <= uncertainty.MAX_LIT_SHARE).all()
    assert (features["marks"] > uncertainty.MAX_MARKS).all()
    assert not uncertainty.looks_like_a_digit(noise).any()
    digits = sample_digits[0].astype(np.float32)
    assert uncertainty.pixel_features(digits)["marks"].max() <= uncertainty.MAX_MARKS
    np.testing.assert_array_equal(uncertainty.bright_marks(np.zeros((0, 28, 28))), [])


# --- the threshold of each model -------------------------------------------------------------

def answers(confidences, right=None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities whose top class 3 has ``confidences``, and labels: 3 where ``right``
    (default all), else 5."""
    confidences = np.asarray(confidences, dtype=np.float64)
    probabilities = np.tile((1 - confidences)[:, None] / 9, (1, 10))
    probabilities[:, 3] = confidences
    right = np.ones(len(confidences), bool) if right is None else np.asarray(right)
    return probabilities, np.where(right, 3, 5)


def test_the_threshold_is_the_largest_that_spares_each_sources_right_answers():
    # 1,000 right answers: 10 below 0.9 (1.0%), 20 below 0.95 (2.0%)
    confident = np.r_[np.full(10, 0.88), np.full(10, 0.93), np.full(980, 0.99)]
    mnist = answers(confident)
    assert uncertainty.flagged_right_share(*mnist, 0.9) == pytest.approx(0.01)
    assert uncertainty.flagged_right_share(*mnist, 0.95) == pytest.approx(0.02)
    assert uncertainty.fit_min_confidence({"mnist": mnist}) == 0.9
    # wrong answers never count, however unsure: 500 more at 0.6 change nothing
    with_wrong = answers(np.r_[confident, np.full(500, 0.6)], np.r_[np.ones(1000), np.zeros(500)])
    assert uncertainty.flagged_right_share(*with_wrong, 0.9) == pytest.approx(0.01)
    assert uncertainty.fit_min_confidence({"mnist": with_wrong}) == 0.9
    # a second, smaller source is not drowned by the first: 2 of its 100 right answers at
    # 0.75 (2%) hold the threshold down to 0.7, although pooled they are 0.2%
    drawn = answers(np.r_[np.full(2, 0.75), np.full(98, 0.99)])
    assert uncertainty.fit_min_confidence({"mnist": mnist, "drawn": drawn}) == 0.7
    pooled = tuple(np.concatenate(parts) for parts in zip(mnist, drawn, strict=True))
    assert uncertainty.fit_min_confidence({"val": pooled}) == 0.9
    # a model sure of everything gets the largest candidate; a weak one the smallest
    assert uncertainty.fit_min_confidence({"val": answers(np.full(50, 0.999))}) == 0.95
    assert uncertainty.fit_min_confidence({"val": answers(np.full(50, 0.45))}) == 0.5
    # a source with no right answer flags none of them
    assert uncertainty.fit_min_confidence({"val": answers([0.99, 0.4], [False, False])}) == 0.95
    with pytest.raises(ValueError, match="no validation digits"):
        uncertainty.fit_min_confidence({"val": answers([])})
    with pytest.raises(ValueError, match="no validation digits"):
        uncertainty.fit_min_confidence({})


def test_the_threshold_flags_by_the_models_own_value(sample_digits):
    digits = sample_digits[0][:3].astype(np.float32)
    probabilities, _labels = answers([0.6, 0.8, 0.97])
    np.testing.assert_array_equal(uncertainty.uncertain(digits, probabilities),
                                  [True, True, False])  # MIN_CONFIDENCE, 0.9
    np.testing.assert_array_equal(uncertainty.uncertain(digits, probabilities, 0.7),
                                  [True, False, False])
    inputs = [predict.LoadedInput("digits.npy", digits)]
    assert [row[4] for row in predict.prediction_rows(inputs, probabilities, 0.5)] == [
        False, False, False]
