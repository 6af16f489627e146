"""The prepared arrays' contract: what preprocess may write and train, evaluate, plot read."""

import numpy as np
import pytest

from mnist_pipeline import fileio, paths, prepared


@pytest.fixture(scope="module")
def digits(sample_digits):
    """40 real digits as preprocess writes them: float32 [0, 1] images and uint8 labels."""
    images, labels = sample_digits
    chosen = np.arange(0, 5000, 125)
    return images[chosen].astype(np.float32) * np.float32(prepared.PIXEL_SCALE), labels[chosen]


def _write_split(split, images, labels):
    fileio.save_npy(paths.prepared_images(split), images)
    fileio.save_npy(paths.prepared_labels(split), labels)


def test_save_then_load_round_trips(tmp_path, monkeypatch, digits):
    monkeypatch.chdir(tmp_path)
    prepared.save("test", *digits)
    images, labels = prepared.load("test")
    assert images.dtype == np.float32 and images.shape == (40, 28, 28)
    np.testing.assert_array_equal(images, digits[0])
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, digits[1])


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 28, 28), np.float64), np.zeros(4, np.uint8), "float32"),
    (np.full((4, 28, 28), 255, np.float32), np.zeros(4, np.uint8), r"outside \[0, 1\]"),
    (np.zeros((4, 28, 28), np.float32), np.zeros(4, np.int64), "4 uint8 labels"),
    (np.zeros((4, 28, 28), np.float32), np.zeros(3, np.uint8), "4 uint8 labels, got 3"),
])
def test_save_refuses_what_the_readers_would(tmp_path, monkeypatch, images, labels, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        prepared.save("train", images, labels)
    assert not paths.PREPARED_DIR.exists()


@pytest.mark.parametrize("images, labels, bad_file, message", [
    (np.zeros((4, 28, 27), np.float32), np.zeros(4, np.uint8), "images", r"shape \(N, 28, 28\)"),
    (np.full((4, 28, 28), np.nan, np.float32), np.zeros(4, np.uint8), "images", "NaN"),
    (np.full((4, 28, 28), 255, np.float32), np.zeros(4, np.uint8), "images", r"outside \[0, 1\]"),
    (np.zeros((4, 28, 28), np.float32), np.array([0, 1, 2, 10], np.uint8), "labels",
     r"outside 0\.\.9"),
    (np.zeros((4, 28, 28), np.float32), np.zeros(3, np.uint8), "labels", "3 labels for 4"),
    (np.zeros((0, 28, 28), np.float32), np.zeros(0, np.uint8), "images", "no images"),
])
def test_load_refuses_bad_arrays(tmp_path, monkeypatch, images, labels, bad_file, message):
    monkeypatch.chdir(tmp_path)
    _write_split("val", images, labels)
    with pytest.raises(ValueError, match=message) as raised:
        prepared.load("val")
    assert f"val_{bad_file}.npy" in str(raised.value)


def test_load_missing_or_corrupt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="train_images.npy: missing"):
        prepared.load("train")
    paths.PREPARED_DIR.mkdir(parents=True)
    paths.prepared_images("train").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="train_images.npy: not a valid .npy"):
        prepared.load("train")


@pytest.mark.parametrize("labels, num_classes, message", [
    (np.array([1, 11, 2]), 10, r"outside 0\.\.9 \(min 1, max 11\)"),
    (np.array([1, -1]), 10, "outside 0..9"),
    (np.array([0, 3]), 3, r"outside 0\.\.2"),
    (np.array([0.0, 1.0]), 10, "integer vector"),
    (np.zeros((2, 2), np.uint8), 10, "integer vector"),
])
def test_check_labels_is_the_one_label_check(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        prepared.check_labels(labels, "some labels", num_classes)
    prepared.check_labels(np.zeros(0, np.uint8), "empty is fine")
