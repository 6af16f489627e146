"""Is this answer worth trusting? "Not a digit" and "unsure" from pixels and probabilities.

numpy (and SciPy's labelling, imported when called): ``mnist-pipeline predict`` and ``serve``
use it without TensorFlow.

A classifier of ten digits answers a digit for anything; the saved model calls uniform noise
an "8" with 99.8% (before calibration). :func:`uncertain` flags an answer when

- the input does not look like an MNIST-style digit (:func:`looks_like_a_digit`): blank
  (less than ``MIN_INK`` of ink), more than ``MAX_LIT_SHARE`` of its pixels bright (a digit
  is thin strokes on black), more than ``MAX_FRAME_SHARE`` of its ink in the outer
  ``FRAME_PIXELS`` rows and columns (MNIST fits every digit in the central 20x20 box), or more
  than ``MAX_MARKS`` separate bright marks (a digit is one to a few strokes; a noisy picture,
  once cropped and fitted into 20x20, is dozens of specks); or
- the model is unsure: its top probability is below ``MIN_CONFIDENCE``. The model is
  calibrated (:mod:`mnist_pipeline.calibration`), so that probability is the share of such
  answers that are right, and the threshold means the same for any trained model.

The thresholds were chosen by ``benchmarks/uncertainty.py`` on the validation split and on
generated non-digits (uniform noise, blank and gray pages, scribbles, letters); its figures
are in benchmarks/README.md. Letters and scribbles, once made MNIST-style, have the pixel
statistics of digits: only the confidence can catch them, and it catches only some.
"""

from __future__ import annotations

import numpy as np

PIXEL_MAX = 255.0
# Below this total ink (sum of pixels / 255, i.e. fully lit pixels' worth) the input is blank:
# the faintest of the 5,000 bundled MNIST digits has 23.
MIN_INK = 10.0
# A pixel is bright above half the scale. Digits: at most 31% of their pixels (5,000 bundled
# digits), uniform noise: 44% or more.
BRIGHT_PIXEL = 127.5
MAX_LIT_SHARE = 0.40
# Share of the ink in the outer frame: digits at most 8%, noise 24% or more, a gray page 27%.
FRAME_PIXELS = 2
MAX_FRAME_SHARE = 0.15
# Separate marks: 8-connected groups of bright pixels. Digits: at most 7 (1 of the 60,000
# MNIST training digits; 4 of the 5,000 bundled), a 28x28 noise picture made MNIST-style: 16
# or more (benchmarks/README.md).
MAX_MARKS = 8
# Top probability below which the model is unsure (calibrated: about that share is right).
# Chosen for the default recipe on digits of writers it never trained on, MNIST's and the
# pen-drawn ones (benchmarks/drawn_recipes.py): the largest of 0.5, 0.6, ..., 0.95 that flags
# at most 1.5% of the right answers of each source; a lower one lets most wrong answers on
# strangers' digits through unflagged. A weaker model (`make sample`'s) is flagged more often.
MIN_CONFIDENCE = 0.9


def pixel_features(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of ``pixels`` (N, 28, 28), 0..255: ``ink`` (sum of pixels / 255),
    ``lit_share`` (share of pixels above ``BRIGHT_PIXEL``) and ``frame_share`` (share of the
    ink in the outer ``FRAME_PIXELS``; 0 for a blank image). float64 arrays (N,)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.ndim != 3 or min(pixels.shape[1:]) <= 2 * FRAME_PIXELS:
        raise ValueError(f"expected pixels of shape (N, 28, 28), got {pixels.shape}")
    ink = pixels / PIXEL_MAX
    total = ink.sum(axis=(1, 2))
    inner = ink[:, FRAME_PIXELS:-FRAME_PIXELS, FRAME_PIXELS:-FRAME_PIXELS].sum(axis=(1, 2))
    frame = np.zeros_like(total)
    np.divide(total - inner, total, out=frame, where=total > 0)
    np.clip(frame, 0.0, 1.0, out=frame)  # float round-off: no -0.0 for an empty frame
    return {"ink": total, "lit_share": (pixels > BRIGHT_PIXEL).mean(axis=(1, 2)),
            "frame_share": frame, "marks": bright_marks(pixels)}


def bright_marks(pixels: np.ndarray) -> np.ndarray:
    """Per image of ``pixels`` (N, 28, 28): how many separate groups of bright pixels
    (above ``BRIGHT_PIXEL``, touching sideways or diagonally) it holds. float64 (N,)."""
    from scipy import ndimage  # here: importing this module stays cheap

    # One labelling of the whole stack; the structure joins no two images. Labels are
    # numbered in scan order, so image i holds those above the highest one before it.
    within_an_image = np.zeros((3, 3, 3), dtype=bool)
    within_an_image[1] = True
    labels, _count = ndimage.label(pixels > BRIGHT_PIXEL, structure=within_an_image)
    highest = np.maximum.accumulate(labels.max(axis=(1, 2), initial=0))
    return np.diff(highest, prepend=0).astype(np.float64)


def looks_like_a_digit(pixels: np.ndarray) -> np.ndarray:
    """bool (N,): each image of ``pixels`` (N, 28, 28), 0..255, light on black, has the
    pixel statistics of an MNIST-style digit (see the module's docstring)."""
    features = pixel_features(pixels)
    return ((features["ink"] >= MIN_INK) & (features["lit_share"] <= MAX_LIT_SHARE)
            & (features["frame_share"] <= MAX_FRAME_SHARE) & (features["marks"] <= MAX_MARKS))


def uncertain(pixels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """bool (N,): the answer ``probabilities`` (N, 10) for ``pixels`` (N, 28, 28), 0..255,
    is not to be trusted: the input does not look like a digit, or the top probability is
    below ``MIN_CONFIDENCE``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(pixels):
        raise ValueError(f"probabilities of shape {probabilities.shape} for "
                         f"{len(pixels)} images")
    return ~looks_like_a_digit(pixels) | (probabilities.max(axis=1, initial=0.0)
                                          < MIN_CONFIDENCE)
