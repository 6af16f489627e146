"""Pictures of sample digits as people scan them, for the tests of digit_image and predict:
one digit at a page's size (binary or gray, either way round), or several side by side."""

from __future__ import annotations

import numpy as np
from PIL import Image


def scan_of(digit: np.ndarray, size: int, dark_on_light: bool, binary: bool) -> np.ndarray:
    """A sample digit as a scan of ``size`` x ``size`` px: the digit's box scaled to 60% of the
    page, gray (bilinear) or binary (0/255 at mid-gray), dark on light or light on dark."""
    rows, columns = np.flatnonzero(digit.max(1)), np.flatnonzero(digit.max(0))
    box = digit[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1].astype(np.float32)
    scale = 0.6 * size / max(box.shape)
    height, width = (max(1, round(side * scale)) for side in box.shape)
    resized = np.asarray(Image.fromarray(box).resize((width, height), Image.Resampling.BILINEAR))
    page = np.zeros((size, size), np.float32)
    top, left = (size - height) // 2, (size - width) // 2
    page[top:top + height, left:left + width] = resized
    if binary:
        page = np.where(page > 127.5, 255.0, 0.0).astype(np.float32)
    return 255.0 - page if dark_on_light else page


def side_by_side(digits: list[np.ndarray], gap_fraction: float, scale: int = 6) -> np.ndarray:
    """Sample digits (cropped to their ink) in a row, ``gap_fraction`` of the tallest one's
    height apart, on a dark page with a margin, enlarged ``scale`` times: light on dark."""
    crops = []
    for digit in digits:
        rows, columns = np.flatnonzero(digit.max(1)), np.flatnonzero(digit.max(0))
        crops.append(digit[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1].astype(np.float32))
    height = max(crop.shape[0] for crop in crops)
    gap = round(gap_fraction * height)
    page = np.zeros((height + 12, sum(crop.shape[1] for crop in crops)
                     + gap * (len(crops) - 1) + 12), np.float32)
    left = 6
    for crop in crops:
        page[6:6 + crop.shape[0], left:left + crop.shape[1]] = crop
        left += crop.shape[1] + gap
    enlarged = Image.fromarray(page).resize((page.shape[1] * scale, page.shape[0] * scale))
    return np.asarray(enlarged, dtype=np.float32)
