"""The network, the exported pixel-input model, saving/loading and input checks."""


import numpy as np
import pytest

from mnist_pipeline.inference import load
from mnist_pipeline.model import build_augmentation, build_network, export_model, to_pixels
from mnist_pipeline.model_file import save_model
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
    # three blocks (28 -> 14 -> 7 -> 3): conv 1*4*9+4, 4*8*9+8, 8*8*9+8, dense 3*3*8*16+16
    (ModelParams(conv_filters=(4, 8, 8), convs_per_block=1, dense_units=16, batch_norm=False),
     40 + 296 + 584 + 72 * 16 + 16 + 170),
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
    loaded = load(tmp_path / "model.keras")  # safe_mode: built-in layers only
    from_pixels = loaded.probabilities(pixels, batch_size=16)
    from_prepared = np.asarray(network.predict(prepared, verbose=0))
    np.testing.assert_allclose(from_pixels, from_prepared, atol=1e-5)
    np.testing.assert_array_equal(from_pixels.argmax(1), from_prepared.argmax(1))
    # evaluate's route: prepared -> pixels -> saved model
    np.testing.assert_array_equal(to_pixels(prepared), pixels)


def moved(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(N, 28, 28) images moved ``rows`` down and ``columns`` right, black moved in."""
    out = np.roll(images, (rows, columns), axis=(1, 2))
    if rows:
        out[:, 0 if rows > 0 else -1, :] = 0
    if columns:
        out[:, :, 0 if columns > 0 else -1] = 0
    return out


@pytest.mark.parametrize("shifts", [4, 8])
def test_test_time_shifts_average_the_network_over_moved_digits(shifts, digits, tmp_path):
    pixels, prepared, _ = digits
    network = build_network(SMALL)
    save_model(export_model(network, shifts), tmp_path / "model.keras")
    loaded = load(tmp_path / "model.keras")  # still safe_mode: built-in layers only
    moves = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    moves += [(1, 1), (1, -1), (-1, 1), (-1, -1)] if shifts == 8 else []
    expected = np.mean([network.predict(moved(prepared, *move), verbose=0) for move in moves],
                       axis=0)
    averaged = loaded.probabilities(pixels, batch_size=16)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    # the shifts matter: the plain network answers differently on these digits
    assert np.abs(averaged - network.predict(prepared, verbose=0)).max() > 1e-3
    # one network, called 1 + shifts times
    assert loaded.native.count_params() == network.count_params()


def test_save_model_leaves_no_temporary_files(tmp_path):
    save_model(export_model(build_network(SMALL)), tmp_path / "models" / "model.keras")
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["model.keras"]


def test_augmentation_changes_training_images_only_when_enabled(digits):
    assert build_augmentation(AugmentationParams(0, 0, 0), seed=1) is None
    augmentation = build_augmentation(AugmentationParams(15, 0.1, 0.1), seed=1)
    prepared = digits[1]
    augmented = np.asarray(augmentation(prepared, training=True))
    assert augmented.shape == prepared.shape
    assert not np.allclose(augmented, prepared)
    assert augmented.min() >= 0 and augmented.max() <= 1.0001
    np.testing.assert_allclose(np.asarray(augmentation(prepared, training=False)), prepared)
