"""The distortions of the robustness curve, and the curve itself on a small real model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mnist_pipeline import robustness
from mnist_pipeline.robustness import DISTORTIONS, LEVELS, distort, robustness_table


@pytest.fixture(scope="module")
def pixels(sample_digits) -> np.ndarray:
    return sample_digits[0][::250].astype(np.float32)  # 20 real digits, 0..255


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_every_distortion_keeps_the_contract_and_is_repeatable(pixels, name):
    for severity in DISTORTIONS[name]:
        out = distort(pixels, name, severity)
        assert out.shape == pixels.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
        assert not np.array_equal(out, pixels)
        np.testing.assert_array_equal(out, distort(pixels, name, severity))  # fixed seed


def test_shifts_move_every_digit_by_whole_pixels(pixels):
    moved = distort(pixels, "shift", 3)
    before = np.array([ndimage.center_of_mass(image) for image in pixels])
    after = np.array([ndimage.center_of_mass(image) for image in moved])
    # one axis moves 3 px (a little less where strokes fall off the edge), the other not at all
    distance = np.abs(after - before)
    assert np.allclose(distance.min(axis=1), 0, atol=0.1)
    assert np.all((distance.max(axis=1) > 2.5) & (distance.max(axis=1) <= 3 + 1e-6))
    assert moved.sum() <= pixels.sum()


def test_severities_grow_as_their_names_say(pixels):
    ink = {name: [distort(pixels, name, s).sum() for s in DISTORTIONS[name]]
           for name in ("zoom_out", "zoom_in", "thicker")}
    assert ink["zoom_out"] == sorted(ink["zoom_out"], reverse=True)
    assert ink["zoom_in"] == sorted(ink["zoom_in"]) and ink["thicker"] == sorted(ink["thicker"])
    assert ink["zoom_out"][0] < pixels.sum() < ink["zoom_in"][0]
    # rotation by 0 and a scale of 1 change nothing (beyond interpolation round-off)
    np.testing.assert_allclose(distort(pixels, "rotation", 0.0), pixels, atol=1e-3)
    np.testing.assert_allclose(distort(pixels, "zoom_in", 1.0), pixels, atol=1e-3)
    noise = distort(np.full((50, 28, 28), 128.0), "noise", 30.0) - 128.0
    assert noise.std() == pytest.approx(30.0, rel=0.05)
    with pytest.raises(ValueError, match="unknown distortion 'blur'"):
        distort(pixels, "blur", 1.0)


def test_the_table_scores_each_distortion_at_each_level(pixels):
    labels = np.arange(len(pixels)) % 10
    clean = {image.tobytes(): label for image, label in zip(pixels, labels, strict=True)}
    calls = []

    def perfect_on_clean_digits(batch):  # right on the undistorted digits, wrong on others
        calls.append(len(batch))
        answers = [clean.get(image.tobytes(), (label + 1) % 10)
                   for image, label in zip(batch, np.tile(labels, len(batch) // len(labels)),
                                           strict=True)]
        return np.eye(10)[answers]

    table = robustness_table(perfect_on_clean_digits, pixels, labels)
    assert calls == [len(pixels) * (1 + LEVELS * len(DISTORTIONS))]  # one call for all
    assert list(table.columns) == ["level", *DISTORTIONS, "mean"]
    assert list(table.level) == list(range(LEVELS + 1))
    assert (table.iloc[0, 1:] == 1.0).all() and (table.iloc[1:, 1:] == 0.0).all().all()
    with pytest.raises(ValueError, match="same number of severities"):
        robustness_table(perfect_on_clean_digits, pixels, labels,
                         {"rotation": (5.0,), "shift": (1.0, 2.0)})


def test_a_real_model_loses_accuracy_as_the_noise_grows(small_model):
    from mnist_pipeline import inference

    classifier = inference.load(small_model.onnx_path)
    table = robustness_table(classifier.probabilities, small_model.digits[:robustness.DIGITS],
                             small_model.labels[:robustness.DIGITS])
    assert table.loc[0, "rotation"] > 0.8
    assert table.loc[LEVELS, "noise"] < table.loc[0, "noise"]
    assert table.loc[LEVELS, "rotation"] < table.loc[0, "rotation"]
