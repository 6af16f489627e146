"""Make a picture of one handwritten digit MNIST-style: grayscale pixels -> 28x28.

A photo or scan of a dark digit on light paper, or a light digit on a dark background, of any
size, becomes what MNIST's digits are: light on black, cropped to the digit, scaled into a
20x20 box and placed by its center of mass in a 28x28 field. Pure image processing (numpy,
Pillow, scipy) on pixels already decoded: reading untrusted picture files is
:mod:`mnist_pipeline.pictures`'s job, so that a pipeline stage can normalize digits with
this module alone.

- :func:`normalize_digit`: grayscale (H, W) 0..255 -> (28, 28); a picture of several digits
  side by side (a page, a number) is refused (:func:`several_digits`), never squeezed into
  one box and guessed;
- :func:`blank_digits`: which of a batch of digits hold no ink, as a blank picture is refused.

Every result is float32 pixel values 0..255, light digit on dark, as the model takes them.
A picture that holds no digit, or more than one, raises :class:`PictureError`.
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
# The strokes' level is at least this percentile of the pixels (ink_levels): the brightest
# 1% of a 16x16 scan are 3 pixels, a stroke; of a large one, a single hot pixel is far less.
STROKE_PERCENTILE = 99.0
# After stretching the background to 0 and the strokes to 1, a pixel belongs to the digit
# when it is this far above the brightest few border pixels (paper grain, JPEG noise).
INK_MARGIN = 0.25
# Connected blobs smaller than this fraction of the largest one are specks, not strokes.
MIN_BLOB_FRACTION = 0.05
# Anti-aliased stroke edges are fainter than the ink threshold; keep this many pixels
# around the strokes so that the crop (and the 28x28 result) includes them, as MNIST does.
EDGE_PIXELS = 2
# Several digits (several_digits): ink blobs are one digit's parts when their boxes are less
# than this fraction of the taller one's height apart (a 5's detached top bar, a 4 drawn in
# two strokes); apart, each group is a digit of its own when it holds at least
# COMPARABLE_INK of the largest group's ink and COMPARABLE_HEIGHT of its height (a speck, a
# stray dash or an underline is neither).
PART_GAP = 0.25
COMPARABLE_INK = 0.3
COMPARABLE_HEIGHT = 0.5


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
    mid-gray): a digit written on paper, binary (0/255) or gray, at any size. A digit
    stretched to fill its whole box can cover most of the border: 1 to 2 in 300 such
    pictures are then taken the wrong way round (``invert`` says it). MNIST itself is white
    on black.
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
    3x3 median filter, so that one hot pixel does not set the scale, or the
    ``STROKE_PERCENTILE`` percentile of the pixels where that is brighter: a small binary
    scan (16x16) has strokes one pixel wide, which the median filter erases.
    """
    background = float(np.median(border_pixels(gray)))
    return background, max(float(ndimage.median_filter(gray, size=3).max()),
                           float(np.percentile(gray, STROKE_PERCENTILE)))


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
    strokes = np.maximum(ndimage.median_filter(images, size=(1, 3, 3)).max(axis=(1, 2)),
                         np.percentile(images, STROKE_PERCENTILE, axis=(1, 2)))
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
    Returns float32 0..255, shape (28, 28); raises :class:`PictureError` for a blank picture
    and for one of several digits side by side (:func:`several_digits`).
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
    mask = digit_mask(stretched)
    problem = several_digits(mask)
    if problem is not None:
        raise PictureError(problem)
    digit_only = np.where(mask, stretched, 0.0)
    # Crop to what is lit, not to the widened mask, which reaches past the strokes.
    rows = np.flatnonzero(digit_only.any(axis=1))
    columns = np.flatnonzero(digit_only.any(axis=0))
    crop = digit_only[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    digit = fit_in_box(crop, DIGIT_BOX)
    return (place_by_center_of_mass(digit, IMAGE_SIZE) * 255.0).astype(np.float32)


def several_digits(mask: np.ndarray) -> str | None:
    """Why the ink of ``mask`` (H, W), from :func:`digit_mask`, is more than one digit, or
    None when it is one.

    The ink's connected blobs are grouped: two are parts of one digit when their bounding
    boxes are less than ``PART_GAP`` of the taller one's height apart, across and down. Two
    or more groups that are each of a digit's size (``COMPARABLE_INK`` of the largest
    group's ink, ``COMPARABLE_HEIGHT`` of its height) are several digits: "12" on a page,
    digits on a form's line. A 5's detached top bar or a 4 drawn in two strokes lie close
    to the rest; a speck, a dash or an underline is small or flat, and is not a digit.
    """
    blobs, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count < 2:
        return None
    boxes = ndimage.find_objects(blobs)
    sizes = np.bincount(blobs.ravel(), minlength=count + 1)[1:]
    group = list(range(count))  # union-find over the blobs

    def root(index: int) -> int:
        while group[index] != index:
            group[index] = group[group[index]]
            index = group[index]
        return index

    for first in range(count):
        for second in range(first + 1, count):
            a, b = boxes[first], boxes[second]
            reach = PART_GAP * max(a[0].stop - a[0].start, b[0].stop - b[0].start)
            gap_rows = max(a[0].start - b[0].stop, b[0].start - a[0].stop)
            gap_columns = max(a[1].start - b[1].stop, b[1].start - a[1].stop)
            if gap_rows < reach and gap_columns < reach:
                group[root(first)] = root(second)
    ink: dict[int, int] = {}
    rows: dict[int, list[int]] = {}
    for index in range(count):
        top = root(index)
        ink[top] = ink.get(top, 0) + int(sizes[index])
        span = rows.setdefault(top, [boxes[index][0].start, boxes[index][0].stop])
        span[0], span[1] = min(span[0], boxes[index][0].start), max(span[1], boxes[index][0].stop)
    heights = {top: stop - start for top, (start, stop) in rows.items()}
    most_ink, tallest = max(ink.values()), max(heights.values())
    digits = [top for top in ink if ink[top] >= COMPARABLE_INK * most_ink
              and heights[top] >= COMPARABLE_HEIGHT * tallest]
    if len(digits) < 2:
        return None
    return (f"several digits: {len(digits)} separate marks of a digit's size, apart from "
            "each other; predict reads one digit a picture: crop each digit into a picture "
            "of its own")


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
