"""Pen-drawn digits -> train / val / test arrays, split by writer (numpy, Pillow, scipy).

Each digit's strokes are placed on the drawing page's pad (:mod:`strokes`), drawn as the page
draws them, and made MNIST-style by ``digit_image.normalize_digit``, the function a picture
sent to ``serve`` or ``predict`` goes through. A writer's digits all go to one split: UCI's
test writers are the test split, ``val_writers`` of its training writers (drawn by the seed)
validate, and the other training writers' digits are rendered ``copies`` times each, every
copy at its own size, slant, aspect and rotation, as different people draw on the page.
Validation and test digits are drawn once, upright, at a size people draw on the page.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mnist_pipeline.digit_image import normalize_digit
from mnist_pipeline.params import DrawnParams
from mnist_pipeline.pendigits import PenDigit, check_writers_apart
from mnist_pipeline.progress import progress as show_progress
from mnist_pipeline.strokes import Placement, place_on_pad, render

# Digit heights (pixels of the 280 px pad) of the validation and test pictures: the range of
# sizes seen when people draw on the page.
EVAL_HEIGHTS = (120.0, 220.0)
# Independent random streams drawn from the one seed.
_VAL_WRITERS_STREAM = 11
_TRAIN_PLACEMENT_STREAM = 12
_EVAL_PLACEMENT_STREAM = 13

Split = tuple[np.ndarray, np.ndarray]  # (uint8 images (N, 28, 28), uint8 labels (N,))


def to_digit_image(digit: PenDigit, placement: Placement) -> np.ndarray:
    """One pen digit as the page would draw it, made MNIST-style: uint8 (28, 28)."""
    pad = render(place_on_pad(digit.strokes, placement))
    return np.round(normalize_digit(pad.astype(np.float32))).astype(np.uint8)


def render_all(digits: Sequence[PenDigit], placements: Sequence[Placement],
               progress: str | None = None) -> Split:
    """``digits`` drawn with their ``placements`` (one each): (images, labels); with a
    ``progress`` label, progress on stderr (thousands of digits take a while): a bar on a
    terminal, a few plain lines in a log."""
    drawn = []
    with show_progress(progress or "", len(digits), progress is not None, unit="digits") as bar:
        for digit, placement in zip(digits, placements, strict=True):
            drawn.append(to_digit_image(digit, placement))
            bar.update(1)
    images = np.stack(drawn)
    labels = np.array([digit.label for digit in digits], dtype=np.uint8)
    return images, labels


def training_placements(count: int, params: DrawnParams, rng: np.random.Generator
                        ) -> list[Placement]:
    """``count`` placements drawn uniformly within the params' ranges."""
    heights = rng.uniform(params.min_height, params.max_height, count)
    slants = rng.uniform(-params.slant, params.slant, count)
    rotations = rng.uniform(-params.rotation_degrees, params.rotation_degrees, count)
    aspects = rng.uniform(1 - params.aspect, 1 + params.aspect, count)
    # Drawn after the others, so that wobble: 0 leaves every other draw as it was.
    wobble_seeds = rng.integers(0, 2**31, count)
    return [Placement(float(h), float(s), float(a), float(r), params.wobble, int(w))
            for h, s, a, r, w in zip(heights, slants, aspects, rotations, wobble_seeds,
                                     strict=True)]


def evaluation_placements(count: int, rng: np.random.Generator) -> list[Placement]:
    """Upright placements at page-like heights (:data:`EVAL_HEIGHTS`)."""
    return [Placement(float(height)) for height in rng.uniform(*EVAL_HEIGHTS, count)]


def pick_val_writers(writers: Sequence[str], count: int, seed: int) -> set[str]:
    """``count`` of the distinct ``writers``, drawn by ``seed`` (the same seed, the same)."""
    distinct = sorted(set(writers), key=_writer_order)
    if count >= len(distinct):
        raise ValueError(f"preprocess.drawn.val_writers: {count} of {len(distinct)} training "
                         "writers would leave none to train on")
    chosen = np.random.default_rng((seed, _VAL_WRITERS_STREAM)).choice(
        len(distinct), size=count, replace=False)
    return {distinct[index] for index in chosen}


def drawn_splits(train_digits: Sequence[PenDigit], test_digits: Sequence[PenDigit],
                 params: DrawnParams, seed: int) -> dict[str, Split]:
    """The pen digits as {"train", "val", "test"} of (uint8 images, uint8 labels).

    Raises ValueError (pendigits.PenFileError) when a writer would reach two splits.
    """
    val_writers = pick_val_writers([digit.writer for digit in train_digits],
                                   params.val_writers, seed)
    train = [digit for digit in train_digits if digit.writer not in val_writers]
    val = [digit for digit in train_digits if digit.writer in val_writers]
    check_writers_apart({"train": [d.writer for d in train], "val": [d.writer for d in val],
                         "test": [d.writer for d in test_digits]})
    copies = [digit for digit in train for _ in range(params.copies)]
    train_rng = np.random.default_rng((seed, _TRAIN_PLACEMENT_STREAM))
    eval_rng = np.random.default_rng((seed, _EVAL_PLACEMENT_STREAM))
    return {
        "train": render_all(copies, training_placements(len(copies), params, train_rng),
                            progress="drawing the pen digits (train)"),
        "val": render_all(val, evaluation_placements(len(val), eval_rng),
                          progress="drawing the pen digits (val)"),
        "test": render_all(test_digits, evaluation_placements(len(test_digits), eval_rng),
                           progress="drawing the pen digits (test)"),
    }


def _writer_order(writer: str) -> tuple[str, int]:
    prefix, _, number = writer.rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (writer, -1)
