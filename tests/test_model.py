"""The network, the exported pixel-input model, saving/loading and input checks."""


import numpy as np
import pytest

from mnist_pipeline.model import (
    ELASTIC_SMOOTHING_PIXELS,
    RandomElasticDistortion,
    build_augmentation,
    build_network,
    export_model,
    load_model,
    predict_probabilities,
    save_model,
    to_pixels,
    warp,
)
from mnist_pipeline.params import AugmentationParams, ModelParams

SMALL = ModelParams(conv_filters=(4, 8), dense_units=16)


@pytest.fixture(scope="module")
def digits(sample_digits):
    """40 real digits: raw pixels 0..255 (float32) and the prepared [0, 1] images (this module's
    own, in place of conftest's 60)."""
    images, labels = sample_digits
    chosen = np.arange(0, 5000, 125)
    raw = images[chosen]
    return raw.astype(np.float32), (raw / 255).astype(np.float32), labels[chosen]


@pytest.mark.parametrize("config, parameters", [
    (ModelParams(conv_filters=(4, 8), dense_units=16), None),
    (ModelParams(conv_filters=(4,), dense_units=16, batch_norm=False), None),
    # one conv per block, no batch norm: conv 3*3*1*4+4, conv 3*3*4*8+8, dense 7*7*8*16+16,
    # head 16*10+10
    (ModelParams(conv_filters=(4, 8), convs_per_block=1, dense_units=16, batch_norm=False),
     40 + 296 + 392 * 16 + 16 + 170),
    # dense, no batch norm: 784*16+16 + 16*10+10
    (ModelParams(architecture="dense", dense_units=16, batch_norm=False), 784 * 16 + 16 + 170),
])
def test_network_maps_images_to_probabilities(config, parameters, digits):
    network = build_network(config)
    probabilities = np.asarray(network(digits[1][:5]))
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    if parameters is not None:
        assert network.count_params() == parameters


def test_exported_model_on_raw_pixels_matches_network_on_prepared_images(digits, tmp_path):
    pixels, prepared, _ = digits
    network = build_network(SMALL)
    save_model(export_model(network), tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")  # safe_mode: built-in layers only
    from_pixels = predict_probabilities(loaded, pixels, batch_size=16)
    from_prepared = np.asarray(network.predict(prepared, verbose=0))
    np.testing.assert_allclose(from_pixels, from_prepared, atol=1e-5)
    np.testing.assert_array_equal(from_pixels.argmax(1), from_prepared.argmax(1))
    # evaluate's route: prepared -> pixels -> saved model
    np.testing.assert_array_equal(to_pixels(prepared), pixels)


def test_save_model_leaves_no_temporary_files(tmp_path):
    save_model(export_model(build_network(SMALL)), tmp_path / "models" / "model.keras")
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["model.keras"]


@pytest.mark.parametrize("content", [b"", b"not a zip file", b"PK\x03\x04 truncated zip"])
def test_load_model_refuses_a_file_that_is_not_a_keras_model(tmp_path, content):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: not a loadable Keras model"):
        load_model(path)


def test_load_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.keras: missing"):
        load_model(tmp_path / "model.keras")


def test_augmentation_changes_training_images_only_when_enabled(digits):
    assert build_augmentation(AugmentationParams(0, 0, 0), seed=1) is None
    augmentation = build_augmentation(AugmentationParams(15, 0.1, 0.1), seed=1)
    prepared = digits[1]
    augmented = np.asarray(augmentation(prepared, training=True))
    assert augmented.shape == prepared.shape
    assert not np.allclose(augmented, prepared)
    assert augmented.min() >= 0 and augmented.max() <= 1.0001
    np.testing.assert_allclose(np.asarray(augmentation(prepared, training=False)), prepared)


def test_warp_moves_pixels_by_the_field_with_background_outside(digits):
    images = digits[1][:3, :, :, None]
    field = np.zeros((3, 28, 28, 2), np.float32)
    np.testing.assert_allclose(np.asarray(warp(images, field)), images, atol=1e-6)
    field[..., 1] = 1.0  # each output pixel reads the input one column to its right
    shifted = np.asarray(warp(images, field))[..., 0]
    np.testing.assert_allclose(shifted[:, :, :-1], images[:, :, 1:, 0], atol=1e-6)
    np.testing.assert_array_equal(shifted[:, :, -1], 0.0)  # read from outside: background
    field[..., 1], field[..., 0] = 0.0, 0.5  # halfway between two rows: their mean
    halfway = np.asarray(warp(images, field))[..., 0]
    np.testing.assert_allclose(halfway[:, :-1], (images[:, :-1, :, 0] + images[:, 1:, :, 0]) / 2,
                               atol=1e-6)


def test_elastic_displacements_are_smooth_with_the_asked_rms():
    layer = RandomElasticDistortion(1.5, seed=3)
    field = np.asarray(layer.displacements(200, 28, 28))
    assert field.shape == (200, 28, 28, 2)
    rms = np.sqrt((field ** 2).mean(axis=(0, 3)))  # per position, over images and both axes
    assert rms.mean() == pytest.approx(1.5, rel=0.05)
    assert rms[0, 0] == pytest.approx(1.5, rel=0.2) and rms[14, 14] == pytest.approx(1.5, rel=0.2)
    # smooth: neighbours move together (uniform noise, unsmoothed, would give ~0)
    neighbours = np.corrcoef(field[:, :, :-1].ravel(), field[:, :, 1:].ravel())[0, 1]
    assert neighbours > 0.9
    assert ELASTIC_SMOOTHING_PIXELS > 1


def test_elastic_distortion_is_seeded_new_each_call_and_keeps_the_range(digits):
    images = digits[1][:8]
    config = AugmentationParams(0, 0, 0, elastic_pixels=1.5)
    augmentation = build_augmentation(config, seed=4)
    assert [layer.name for layer in augmentation.layers][1:-1] == ["random_elastic"]
    first, second = (np.asarray(augmentation(images, training=True)) for _ in range(2))
    assert first.shape == images.shape
    assert not np.array_equal(first, second)
    assert first.min() >= 0 and first.max() <= 1 + 1e-6
    assert 0 < np.abs(first - images).mean() < 0.2  # distorted, still the same digits
    again = build_augmentation(config, seed=4)
    np.testing.assert_array_equal(np.asarray(again(images, training=True)), first)
    np.testing.assert_array_equal(np.asarray(augmentation(images, training=False)), images)
