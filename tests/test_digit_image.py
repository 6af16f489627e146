"""Grayscale pixels of a digit -> an MNIST-style 28x28 digit: the pure functions, on real MNIST
digits. Reading picture files: test_pictures.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sample_data import correlation, on_paper, paper_scan
from scan_pictures import scan_of, side_by_side

from mnist_pipeline import digit_image
from mnist_pipeline.digit_image import PictureError, normalize_digit, should_invert

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


# --- scans as people have them: sizes, binary or gray, either polarity ----------------------


@pytest.mark.parametrize("size", [16, 28, 64, 300, 2000])
@pytest.mark.parametrize("binary", [False, True], ids=["gray", "binary"])
def test_scans_of_any_size_binary_or_gray_either_way_round_read_as_the_digit(
        sample_digits, size: int, binary: bool) -> None:
    images, _labels = sample_digits
    chosen = images[np.random.default_rng(size).choice(len(images), 4 if size == 2000 else 12,
                                                       replace=False)]
    for digit in chosen:
        reference = normalize_digit(digit.astype(np.float32))
        for dark_on_light in (True, False):
            scan = scan_of(digit, size, dark_on_light, binary)
            assert should_invert(scan) == dark_on_light, (size, binary, dark_on_light)
            read = normalize_digit(scan)  # no options
            # a 16 px binary scan has lost much of the stroke; larger ones little
            assert correlation(read, reference) > (0.45 if size == 16 else 0.6)
        # both polarities of one scan are read alike
        np.testing.assert_allclose(normalize_digit(scan_of(digit, size, True, binary)),
                                   normalize_digit(scan_of(digit, size, False, binary)),
                                   atol=0.05)  # float round-off of the resizing


# --- a page of several digits is refused; one digit in parts is read ------------------------


def test_a_page_of_several_digits_is_refused_naming_the_problem(sample_digits) -> None:
    images, labels = sample_digits
    one, two, seven = (images[np.flatnonzero(labels == digit)[3]] for digit in (1, 2, 7))
    for digits, gap in (([one, two], 0.5), ([two, seven], 1.0), ([one, two, seven], 0.4)):
        page = side_by_side(digits, gap)
        with pytest.raises(PictureError, match=f"^several digits: {len(digits)} separate "
                                               "marks of a digit's size"):
            normalize_digit(page)
        with pytest.raises(PictureError, match="several digits"):
            normalize_digit(255 - page)  # on paper too
    # 100 random pairs half a digit's height apart: every one refused
    rng = np.random.default_rng(0)
    for _ in range(100):
        pair = [images[index] for index in rng.integers(0, len(images), 2)]
        with pytest.raises(PictureError, match="several digits: 2"):
            normalize_digit(side_by_side(pair, 0.5, scale=3))


def strokes_picture(strokes: list[list[tuple[int, int]]], size: int = 200,
                    width: int = 14) -> np.ndarray:
    """Pen strokes (lists of (x, y) points) drawn dark on a light ``size`` px page."""
    page = Image.new("L", (size, size), 240)
    draw = ImageDraw.Draw(page)
    for stroke in strokes:
        draw.line(stroke, fill=20, width=width, joint="curve")
    return np.asarray(page, dtype=np.float32)


def test_a_digit_in_parts_with_specks_is_still_one_digit(sample_digits) -> None:
    # a 5 whose top bar was lifted off the page (gap 10 px for a 120 px digit)
    five = strokes_picture([[(125, 40), (80, 40)],
                            [(75, 52), (70, 95), (100, 88), (125, 105), (125, 135), (100, 158),
                             (70, 150)]])
    # a 4 drawn in two strokes that do not touch
    four = strokes_picture([[(100, 30), (60, 110), (140, 110)], [(125, 50), (125, 98)],
                            [(125, 122), (125, 170)]])
    # a sample 7 with specks of dirt and a short dash beside it
    seven = paper_scan(sample_digits[0][np.flatnonzero(sample_digits[1] == 7)[0]], 280)
    seven[20:24, 20:24] = seven[250:253, 30:33] = seven[200:203, 240:243] = 30
    seven[140:144, 215:240] = 30
    for name, picture in (("5", five), ("4", four), ("7", seven)):
        assert several_digits_problem(picture) is None, name
        digit = normalize_digit(picture)
        assert digit.shape == (28, 28) and digit.max() > 200, name
    # the 5's bar is in the picture the model sees: ink in the top rows, right of centre
    assert normalize_digit(five)[4:8, 14:24].max() > 100


def several_digits_problem(picture: np.ndarray) -> str | None:
    """What :func:`several_digits` says of a dark-on-light ``picture``."""
    from mnist_pipeline.digit_image import digit_mask, several_digits, stretch_contrast

    return several_digits(digit_mask(stretch_contrast(255 - picture)))
