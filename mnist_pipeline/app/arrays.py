"""Arrays of MNIST-style digits checked as the model takes them: one reading of pixel
values for ``predict``'s ``.npy`` inputs and ``serve``'s JSON, so that the two agree.
"""

from __future__ import annotations

import numpy as np

from mnist_pipeline import digit_image
from mnist_pipeline.digit_image import IMAGE_SIZE


class InputError(ValueError):
    """An input cannot be turned into digits; the message starts with the input's path."""


class BlankDigitError(InputError):
    """An array holds a digit without ink (:func:`digit_image.blank_digits`)."""


def as_pixel_batch(array: np.ndarray, name: str) -> np.ndarray:
    """An (N, 28, 28) array of pixels on the 0..255 scale -> float32, or :class:`InputError`.

    One scale whatever the dtype, the one the model takes: integers and floats must lie in
    0..255 and are used as they are; nothing is guessed from the values (so 0/1 and 0.0/1.0
    are read alike). A digit with no stroke ``MIN_CONTRAST`` brighter than its background
    (:func:`digit_image.blank_digits`: an empty field, or [0, 1] values never multiplied by
    255) raises :class:`BlankDigitError`, as a blank picture is refused.
    """
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"{name}: expected images of shape (N, 28, 28), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{name}: expected integer or float pixels, got dtype {array.dtype}")
    pixels = array.astype(np.float32)
    if pixels.size == 0:
        return pixels
    if not np.isfinite(pixels).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise InputError(f"{name}: pixel values {low:g}..{high:g} are outside 0..255")
    blank = np.flatnonzero(digit_image.blank_digits(pixels))
    if len(blank):
        which = f"digit {blank[0]}" if len(blank) == 1 else \
            f"{len(blank)} digits, the first {blank[0]}"
        raise BlankDigitError(
            f"{name}: blank image: no digit found ({which} of {len(pixels)}; pixels are read "
            "on 0..255, light digit on dark: multiply [0, 1] values by 255)")
    return pixels
