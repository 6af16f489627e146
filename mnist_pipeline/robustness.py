"""Accuracy under controlled distortions of the test digits: the robustness curve. numpy,
scipy and pandas; the model is any function from pixels to probabilities.

Each distortion has :data:`LEVELS` severities, mildest first (:data:`DISTORTIONS`); level 0 is
the undistorted digit. The evaluate stage scores the first :data:`DIGITS` test digits at every
level into ``plots/robustness.csv``, one column per distortion, so ``dvc plots diff main``
draws one line per distortion and revision: a branch whose lines sit higher made the model
sturdier. The distortions are fixed (their random parts use :data:`SEED`, not the params'
seed), so two revisions are scored on the same distorted digits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import ndimage

from mnist_pipeline.prepared import PIXEL_MAX

SEED = 0
# Test digits scored: 6 distortions x 4 levels x 150 digits, each digit (1 + shifts) network
# passes, is a few seconds on 2 idle CPU cores (benchmarks/README.md); 150 digits resolve
# 2/3 of a point of accuracy.
DIGITS = 150
LEVELS = 4
# Severity per level, and what it means.
DISTORTIONS: dict[str, tuple[float, ...]] = {
    "rotation": (5.0, 10.0, 20.0, 30.0),  # degrees, clockwise or not (half each)
    "shift": (1.0, 2.0, 3.0, 4.0),  # whole pixels up, down, left or right (a quarter each)
    "zoom_out": (0.925, 0.85, 0.775, 0.7),  # scale factor about the center
    "zoom_in": (1.075, 1.15, 1.225, 1.3),
    "thicker": (1.0, 2.0, 3.0, 4.0),  # pixels added to the stroke width (grey dilation)
    "noise": (15.0, 30.0, 45.0, 60.0),  # std of Gaussian pixel noise, 0..255 scale, clipped
}


def distort(pixels: np.ndarray, distortion: str, severity: float,
            seed: int = SEED) -> np.ndarray:
    """``pixels`` (N, 28, 28), 0..255, distorted: float32 (N, 28, 28) in 0..255, black moved in.

    ``distortion`` is a key of :data:`DISTORTIONS`; ``severity`` in its unit (any value, not
    only the tabled ones). Random choices (sign of a rotation, direction of a shift, the
    noise) come from ``seed``.
    """
    images = np.asarray(pixels, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected pixels of shape (N, 28, 28), got {images.shape}")
    rng = np.random.default_rng(seed)
    if distortion == "rotation":
        signs = rng.permutation(np.arange(len(images)) % 2) * 2 - 1
        out = np.empty_like(images)
        for sign in (-1, 1):
            chosen = signs == sign
            out[chosen] = ndimage.rotate(images[chosen], sign * severity, axes=(1, 2),
                                         reshape=False, order=1, cval=0.0)
    elif distortion == "shift":
        step = int(round(severity))
        directions = rng.permutation(np.arange(len(images)) % 4)
        out = np.zeros_like(images)
        for direction, (rows, columns) in enumerate(((step, 0), (-step, 0), (0, step),
                                                     (0, -step))):
            chosen = directions == direction
            out[chosen] = _moved(images[chosen], rows, columns)
    elif distortion in ("zoom_out", "zoom_in"):
        if not severity > 0:
            raise ValueError(f"{distortion}: the scale must be > 0, got {severity}")
        center = (np.asarray(images.shape[1:]) - 1) / 2
        # output (r, c) samples the input at center + (r, c - center) / scale
        matrix = np.diag([1.0, 1.0 / severity, 1.0 / severity])
        offset = np.concatenate([[0.0], center - center / severity])
        out = ndimage.affine_transform(images, matrix, offset=offset, order=1, cval=0.0)
    elif distortion == "thicker":
        size = int(round(severity)) + 1
        out = ndimage.grey_dilation(images, size=(1, size, size)) if size > 1 else images.copy()
    elif distortion == "noise":
        out = images + rng.normal(0.0, severity, images.shape).astype(np.float32)
    else:
        raise ValueError(f"unknown distortion {distortion!r}; one of {', '.join(DISTORTIONS)}")
    return np.clip(out, 0.0, PIXEL_MAX).astype(np.float32)


def _moved(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Images moved ``rows`` down and ``columns`` right, whole pixels, black moved in."""
    height, width = images.shape[1:]
    out = np.zeros_like(images)
    if abs(rows) >= height or abs(columns) >= width:
        return out
    down, up, right, left = max(rows, 0), max(-rows, 0), max(columns, 0), max(-columns, 0)
    out[:, down:height - up, right:width - left] = images[:, up:height - down, left:width - right]
    return out


def robustness_table(probabilities: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray,
                     labels: np.ndarray,
                     distortions: dict[str, tuple[float, ...]] | None = None) -> pd.DataFrame:
    """Accuracy at each level: columns ``level`` (0 = undistorted, then 1.. per severity),
    one per distortion, and ``mean`` (over the distortions); rows 0..levels.
    ``probabilities`` maps pixels (n, 28, 28) to (n, classes); it is called once, on all
    distorted copies together.

    Every distortion of ``distortions`` (default :data:`DISTORTIONS`) needs the same number
    of severities.
    """
    distortions = DISTORTIONS if distortions is None else distortions
    levels = {len(severities) for severities in distortions.values()}
    if len(levels) != 1:
        counts = {name: len(severities) for name, severities in distortions.items()}
        raise ValueError(f"every distortion needs the same number of severities, got {counts}")
    (count,) = levels
    pixels = np.asarray(pixels, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(pixels) or not len(labels):
        raise ValueError(f"{len(pixels)} digits and {len(labels)} labels: need as many, >= 1")
    batches = [pixels] + [distort(pixels, name, severity)
                          for name, severities in distortions.items() for severity in severities]
    predicted = np.asarray(probabilities(np.concatenate(batches))).argmax(axis=1)
    accuracy = (predicted.reshape(len(batches), len(labels)) == labels).mean(axis=1).round(6)
    table = pd.DataFrame({"level": np.arange(count + 1)})
    for position, name in enumerate(distortions):
        start = 1 + position * count
        table[name] = np.concatenate([[accuracy[0]], accuracy[start:start + count]])
    table["mean"] = table[list(distortions)].mean(axis=1).round(6)
    return table
