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
- the model is unsure: its top probability is below the model's own threshold, fitted on
  its validation digits when it is trained (:func:`fit_min_confidence`) and saved in the
  model file (``MIN_CONFIDENCE`` for older files). The model is calibrated
  (:mod:`mnist_pipeline.calibration`), so that probability is the share of such answers that
  are right; the fitted threshold makes the flag cost every model the same share of its
  right answers.

The thresholds were chosen by ``benchmarks/uncertainty.py`` on the validation split and on
generated non-digits (uniform noise, blank and gray pages, scribbles, letters); its figures
are in benchmarks/README.md. Letters and scribbles, once made MNIST-style, have the pixel
statistics of digits: only the confidence can catch them, and it catches only some.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
# Each model carries its own, fitted on its validation digits by :func:`fit_min_confidence`
# when it is trained and read from its file by :mod:`mnist_pipeline.inference`; this one is
# for model files saved before that. It was chosen for the default recipe on digits of writers
# it never trained on, MNIST's and the pen-drawn ones (benchmarks/drawn_recipes.py), by the
# same rule; a weaker model (`make sample`'s) flagged 2.6% of its right test answers with it.
MIN_CONFIDENCE = 0.9
# The rule of fit_min_confidence: the largest candidate that flags at most this share of each
# validation source's right answers (benchmarks/drawn_recipes.py's THRESHOLDS). A lower one
# lets most wrong answers on strangers' digits through unflagged; a higher one cries wolf.
CANDIDATE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
MAX_FLAGGED_RIGHT = 0.015
# Where a model file keeps its own threshold: the name of the saved Keras model's last layer
# (mnist_pipeline.model.export_model) and the key of the ONNX model's metadata_props.
THRESHOLD_LAYER = "uncertain_threshold"
METADATA_KEY = "min_confidence"

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


def uncertain(pixels: np.ndarray, probabilities: np.ndarray,
              min_confidence: float = MIN_CONFIDENCE) -> np.ndarray:
    """bool (N,): the answer ``probabilities`` (N, 10) for ``pixels`` (N, 28, 28), 0..255,
    is not to be trusted: the input does not look like a digit, or the top probability is
    below ``min_confidence`` (the model's own: ``Classifier.min_confidence``)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(pixels):
        raise ValueError(f"probabilities of shape {probabilities.shape} for "
                         f"{len(pixels)} images")
    return ~looks_like_a_digit(pixels) | (probabilities.max(axis=1, initial=0.0)
                                          < min_confidence)


def flagged_right_share(probabilities: np.ndarray, labels: np.ndarray,
                        threshold: float) -> float:
    """The share of the right answers among ``probabilities`` (N, 10) for ``labels`` (N,)
    whose top probability is below ``threshold``; 0.0 when none is right."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != (len(probabilities),):
        raise ValueError(f"{labels.shape} labels for probabilities {probabilities.shape}")
    right = probabilities.argmax(axis=1) == labels
    if not right.any():
        return 0.0
    return float((probabilities[right].max(axis=1) < threshold).mean())


def fit_min_confidence(sources: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       candidates: Sequence[float] = CANDIDATE_THRESHOLDS,
                       max_flagged_right: float = MAX_FLAGGED_RIGHT) -> float:
    """The ``uncertain`` threshold of one model: the largest of ``candidates`` that flags at
    most ``max_flagged_right`` of the right answers of every source of ``sources`` ({name:
    (probabilities (N, 10), labels (N,))}, the model's calibrated answers on its validation
    digits); the smallest candidate when even that flags more (the model is weak: better an
    honest flag on many answers than none). Pure; ValueError for no digits.

    Per source, not pooled: a source of few digits (the pen's) must not hide behind a large
    one. Only the confidence is fitted: the pixel rules of :func:`looks_like_a_digit` are
    the same for every model.
    """
    if not sources or not all(len(labels) for _probabilities, labels in sources.values()):
        raise ValueError("no validation digits to fit the uncertain threshold on")
    ordered = sorted(candidates)
    if not ordered:
        raise ValueError("no candidate thresholds")
    fitting = [threshold for threshold in ordered
               if all(flagged_right_share(probabilities, labels, threshold) <= max_flagged_right
                      for probabilities, labels in sources.values())]
    return float(fitting[-1] if fitting else ordered[0])
