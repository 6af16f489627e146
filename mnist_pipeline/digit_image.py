"""Make a picture of one handwritten digit MNIST-style: grayscale pixels -> 28x28.

A photo or scan of a dark digit on light paper, or a light digit on a dark background, of any
size, becomes what MNIST's digits are: light on black, cropped to the digit, scaled into a
20x20 box and placed by its center of mass in a 28x28 field. Pure image processing (numpy,
Pillow, scipy) on pixels already decoded: reading untrusted picture files is
:mod:`mnist_pipeline.pictures`'s job, so that a pipeline stage can normalize digits with
this module alone.

- :func:`normalize_digit`: grayscale (H, W) 0..255 -> (28, 28);
- :func:`blank_digits`: which of a batch of digits hold no ink, as a blank picture is refused.

Every result is float32 pixel values 0..255, light digit on dark, as the model takes them.
A picture that holds no digit raises :class:`PictureError`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from mnist_pipeline.prepared import IMAGE_SIZE

InvertMode = Literal["auto", "always", "never"]
INVERT_MODES: tuple[str, ...] = ("auto", "always", "never")

# MNIST geometry (LeCun): each digit was scaled to fit a 20x20 box, keeping its aspect
# ratio, and placed in a 28x28 field so that its center of mass sits in the middle: at
# array index 14 in both directions, where the bundled real digits have it on average.
DIGIT_BOX = 20
CENTER_OF_MASS = 14.0

# The border ring (this fraction of the shorter side, at least 1 px) tells paper from ink.
BORDER_FRACTION = 0.05
# Less contrast than this (of 255) between the background and the brightest stroke: blank.
MIN_CONTRAST = 32.0
# After stretching the background to 0 and the strokes to 1, a pixel belongs to the digit
# when it is this far above the brightest few border pixels (paper grain, JPEG noise).
INK_MARGIN = 0.25
# Connected blobs smaller than this fraction of the largest one are specks, not strokes.
MIN_BLOB_FRACTION = 0.05
# Anti-aliased stroke edges are fainter than the ink threshold; keep this many pixels
# around the strokes so that the crop (and the 28x28 result) includes them, as MNIST does.
EDGE_PIXELS = 2


class PictureError(ValueError):
    """A picture cannot be read or holds no digit; the message says why (not which file).

    Defined here, where a blank picture is refused; :mod:`mnist_pipeline.pictures`
    raises it for everything it cannot read."""


def border_pixels(gray: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """The pixels of the outer ring of ``gray`` (H, W), ``fraction`` of the shorter side wide."""
    width = max(1, round(fraction * min(gray.shape)))
    inner = np.zeros(gray.shape, dtype=bool)
    inner[width:-width, width:-width] = True
    return gray[~inner]


def should_invert(gray: np.ndarray, mode: InvertMode = "auto") -> bool:
    """Whether ``gray`` (H, W), 0..255, must be inverted to be a light digit on dark.

    ``auto`` inverts when the border is mostly light (the median border pixel is above
    mid-gray): a digit written on paper. MNIST itself is white on black.
    """
    if mode not in INVERT_MODES:
        raise ValueError(f"invert mode {mode!r}: choose one of {', '.join(INVERT_MODES)}")
    if mode != "auto":
        return mode == "always"
    return float(np.median(border_pixels(gray))) > 127.5


def digit_mask(stretched: np.ndarray) -> np.ndarray:
    """Where the digit is in ``stretched`` (H, W), from :func:`stretch_contrast`: a bool mask.

    Ink is what lies clearly above the border's own noise (paper grain, JPEG artefacts);
    blobs much smaller than the largest are specks and dropped; the strokes are then widened
    by ``EDGE_PIXELS`` to take in their faint anti-aliased edges.
    Raises :class:`PictureError` when there is no ink at all (a blank picture).
    """
    noise_level = float(np.percentile(border_pixels(stretched), 99))
    ink = stretched > min(noise_level + INK_MARGIN, 0.75)
    blobs, count = ndimage.label(ink, structure=np.ones((3, 3)))
    if count == 0:
        raise PictureError("blank image: no digit found")
    sizes = np.bincount(blobs.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_BLOB_FRACTION * sizes.max()) + 1
    strokes = np.isin(blobs, keep)
    return ndimage.binary_dilation(strokes, structure=np.ones((3, 3)), iterations=EDGE_PIXELS)


def ink_levels(gray: np.ndarray) -> tuple[float, float]:
    """(background, strokes) of ``gray`` (H, W), light digit on dark, 0..255.

    The background is the median border pixel; the strokes are the brightest pixel after a
    3x3 median filter, so that one hot pixel does not set the scale.
    """
    background = float(np.median(border_pixels(gray)))
    return background, float(ndimage.median_filter(gray, size=3).max())


def blank_digits(images: np.ndarray) -> np.ndarray:
    """Which of ``images`` (N, H, W), light digits on dark, 0..255, are blank: their strokes
    are not ``MIN_CONTRAST`` brighter than their background (:func:`ink_levels`), as a blank
    picture is refused. A bool array (N,)."""
    images = np.asarray(images, dtype=np.float32)
    if images.size == 0:
        return np.zeros(len(images), dtype=bool)
    width = max(1, round(BORDER_FRACTION * min(images.shape[1:])))  # as border_pixels
    inner = np.zeros(images.shape[1:], dtype=bool)
    inner[width:-width, width:-width] = True
    background = np.median(images[:, ~inner], axis=1)
    strokes = ndimage.median_filter(images, size=(1, 3, 3)).max(axis=(1, 2))
    return strokes - background < MIN_CONTRAST


def stretch_contrast(gray: np.ndarray) -> np.ndarray:
    """``gray`` (H, W), light digit on dark, 0..255 -> float32 with background 0, strokes 1.

    Scaled by :func:`ink_levels`. Raises :class:`PictureError` when the strokes are not
    ``MIN_CONTRAST`` brighter than the background (a blank picture).
    """
    background, strokes = ink_levels(gray)
    if strokes - background < MIN_CONTRAST:
        raise PictureError("blank image: no digit found")
    stretched = (gray - background) / (strokes - background)
    return np.clip(stretched, 0.0, 1.0).astype(np.float32)


def normalize_digit(gray: np.ndarray, invert: InvertMode = "auto") -> np.ndarray:
    """A picture of one digit, grayscale (H, W) 0..255 -> an MNIST-style 28x28 image.

    Steps, as LeCun made MNIST: make it light-on-dark (see :func:`should_invert`), stretch
    the contrast, crop to the digit (:func:`digit_mask`), scale it so that its longer side
    is 20 px keeping the aspect ratio (anti-aliased), and paste it into a black 28x28 field
    with its center of mass in the middle. A 28x28 MNIST digit comes out (nearly) unchanged.
    Returns float32 0..255, shape (28, 28); raises :class:`PictureError` for a blank picture.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2:
        raise PictureError(f"expected a grayscale picture (H, W), got shape {gray.shape}")
    if min(gray.shape) < 2:
        height, width = gray.shape
        raise PictureError(f"too small: a {width}x{height} pixel picture cannot hold a digit "
                           "(it needs at least 2x2 pixels)")
    if should_invert(gray, invert):
        gray = 255.0 - gray
    stretched = stretch_contrast(gray)
    digit_only = np.where(digit_mask(stretched), stretched, 0.0)
    # Crop to what is lit, not to the widened mask, which reaches past the strokes.
    rows = np.flatnonzero(digit_only.any(axis=1))
    columns = np.flatnonzero(digit_only.any(axis=0))
    crop = digit_only[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    digit = fit_in_box(crop, DIGIT_BOX)
    return (place_by_center_of_mass(digit, IMAGE_SIZE) * 255.0).astype(np.float32)


def fit_in_box(image: np.ndarray, box: int) -> np.ndarray:
    """Resize ``image`` (H, W), values 0..1, so its longer side is ``box``, keeping its shape.

    Lanczos resampling, anti-aliased when shrinking; the result is clipped to 0..1 and its
    brightest pixel brought back to 1, since shrinking a thin pen stroke leaves it faint.
    """
    height, width = image.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (W, H)
    if size != (width, height):
        picture = Image.fromarray(image.astype(np.float32))  # float32 -> Pillow mode "F"
        resized = picture.resize(size, Image.Resampling.LANCZOS)
        image = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    peak = float(image.max())
    return image / peak if peak > 0 else image


def place_by_center_of_mass(digit: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Paste ``digit`` (h, w <= size) into a black (size, size) field, its mass centered.

    The shift is whole pixels (no resampling blur), and clamped so the digit stays inside.
    """
    height, width = digit.shape
    if height > size or width > size:
        raise ValueError(f"digit of shape {digit.shape} does not fit in {size}x{size}")
    center_row, center_column = ndimage.center_of_mass(digit)
    target = CENTER_OF_MASS * size / IMAGE_SIZE
    top = int(np.clip(round(target - center_row), 0, size - height))
    left = int(np.clip(round(target - center_column), 0, size - width))
    field = np.zeros((size, size), dtype=np.float32)
    field[top:top + height, left:left + width] = digit
    return field
