"""Grayscale pixels of a digit -> an MNIST-style 28x28 digit: the pure functions, on real MNIST
digits. Reading picture files: test_pictures.py."""

from __future__ import annotations

import numpy as np
import pytest
from sample_data import correlation, on_paper

from mnist_pipeline import digit_image

# --- normalize_digit ---------------------------------------------------------------------


def test_mnist_digit_comes_out_nearly_unchanged(digits: np.ndarray) -> None:
    normalized = np.stack([digit_image.normalize_digit(digit) for digit in digits])
    assert normalized.shape == (60, 28, 28) and normalized.dtype == np.float32
    mean_abs_difference = np.abs(normalized - digits).mean(axis=(1, 2))
    assert np.median(mean_abs_difference) < 1.0  # of 255: the same picture
    assert (mean_abs_difference < 3.0).mean() >= 0.9


def test_dark_digit_on_paper_becomes_its_mnist_self(digits: np.ndarray) -> None:
    for seed, digit in enumerate(digits[::6]):
        normalized = digit_image.normalize_digit(on_paper(digit, seed=seed))
        assert normalized.min() >= 0 and normalized.max() == pytest.approx(255.0)
        assert correlation(normalized, digit) > 0.8


def test_result_is_mnist_shaped(digits: np.ndarray) -> None:
    normalized = digit_image.normalize_digit(on_paper(digits[7], size=90, at=(120, 90)))
    lit_rows = np.flatnonzero(normalized.max(axis=1) > 0)
    lit_columns = np.flatnonzero(normalized.max(axis=0) > 0)
    longer_side = max(np.ptp(lit_rows), np.ptp(lit_columns)) + 1
    assert longer_side == digit_image.DIGIT_BOX
    center_row, center_column = np.average(
        np.indices(normalized.shape).reshape(2, -1), axis=1, weights=normalized.ravel()
    )
    assert abs(center_row - 14) <= 0.5 and abs(center_column - 14) <= 0.5


def test_specks_of_dirt_are_ignored(digits: np.ndarray) -> None:
    picture = on_paper(digits[20])
    picture[100:103, 215:218] = 20  # a dark speck right of the digit (it spans x 30..180)
    clean = digit_image.normalize_digit(on_paper(digits[20]))
    # Kept, the speck would widen the crop and shrink the digit; ignored, nothing changes.
    assert np.abs(digit_image.normalize_digit(picture) - clean).max() < 8.0


def test_blank_picture_is_refused() -> None:
    for level in (0, 128, 255):
        with pytest.raises(ValueError, match="blank"):
            digit_image.normalize_digit(np.full((50, 40), level, dtype=np.float32))


# --- inversion ---------------------------------------------------------------------------


def test_auto_inverts_paper_but_not_mnist(digits: np.ndarray) -> None:
    assert digit_image.should_invert(on_paper(digits[0]).astype(np.float32), "auto")
    assert not digit_image.should_invert(digits[0], "auto")


def test_forced_inversion(digits: np.ndarray) -> None:
    assert digit_image.should_invert(digits[0], "always")
    assert not digit_image.should_invert(on_paper(digits[0]).astype(np.float32), "never")
    with pytest.raises(ValueError, match="invert mode"):
        digit_image.should_invert(digits[0], "sometimes")  # type: ignore[arg-type]


def test_forced_inversion_of_a_picture(digits: np.ndarray) -> None:
    picture = 255.0 - digits[3]  # black on white: MNIST inverted
    assert correlation(digit_image.normalize_digit(picture, "always"), digits[3]) > 0.9
    # Taken as light-on-dark, nothing is brighter than the white background.
    with pytest.raises(ValueError, match="blank"):
        digit_image.normalize_digit(picture, "never")


# --- what normalizing needs -------------------------------------------------------------------


IMPORTS = """
import sys
def project():
    return {name for name in sys.modules if name.startswith("mnist_pipeline")}
from mnist_pipeline import prepared
before = project()
from mnist_pipeline import digit_image
print(" ".join(sorted(project() - before)))
"""


def test_normalizing_needs_no_decoding_code() -> None:
    """A pipeline stage normalizes digits with this module: numpy, scipy, Pillow and
    mnist_pipeline.prepared, not the code that reads untrusted files (pictures)."""
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                            timeout=120, check=True, cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.split() == ["mnist_pipeline.digit_image"]
