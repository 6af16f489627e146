"""Read digits from files, turn them into MNIST-style 28x28 images, and classify them.

Accepted inputs (see :func:`load_input`):

- a PNG or JPEG picture of one digit: a photo or scan of a dark digit on light paper, or a
  light digit on a dark background, of any size; it goes through :func:`normalize_digit`;
- an IDX image file (raw or gzip-compressed), as MNIST ships them: N x 28 x 28 uint8;
- a ``.npy`` array of shape (N, 28, 28): uint8 (or integers) 0..255, or floats, where a
  maximum <= 1.0 means the [0, 1] scale (multiplied by 255) and anything else 0..255.

IDX and ``.npy`` batches are taken as already-MNIST-style digits and passed on unchanged.
Every loader returns float32 pixel values 0..255 of shape (N, 28, 28), light digit on dark,
which is what the model takes (its first layer does the 1/255 scaling).

All of this is numpy, Pillow and scipy; Keras is imported only in :func:`load_model`, so
the command line can answer ``--help`` and report bad inputs without loading TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import io as text_io
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from mnist_pipeline import idx

InvertMode = Literal["auto", "always", "never"]
INVERT_MODES: tuple[str, ...] = ("auto", "always", "never")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
CSV_HEADER = ("input", "index", "label", "confidence")
PREDICT_BATCH_SIZE = 256

# MNIST geometry (LeCun): each digit was scaled to fit a 20x20 box, keeping its aspect
# ratio, and placed in a 28x28 field so that its center of mass sits in the middle. On the
# 5,000 bundled real digits the center of mass (row, column) averages (13.99, 14.00) in
# array indices, so that is where we put it.
IMAGE_SIZE = 28
DIGIT_BOX = 20
CENTER_OF_MASS = 14.0

# Photos are shrunk to this longer side before any work: the digit ends up 20 px tall anyway,
# and a 12-megapixel phone picture would otherwise make the filters below take seconds.
WORKING_MAX_SIDE = 512
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


class InputError(ValueError):
    """An input cannot be turned into digits; the message starts with the input's path."""


@dataclass(frozen=True)
class LoadedInput:
    """One input as the user named it, and its digits: float32 0..255, shape (N, 28, 28)."""

    name: str
    images: np.ndarray


# ---------------------------------------------------------------------------------------
# Pictures of one digit


def load_picture(path: str | Path, max_side: int = WORKING_MAX_SIDE) -> np.ndarray:
    """Read a PNG/JPEG (or any picture Pillow reads) as grayscale float32 0..255, (H, W).

    The EXIF orientation is applied (phone photos are often stored sideways), transparency
    is composited onto white (a digit drawn on a transparent canvas is ink on paper), and
    pictures larger than ``max_side`` are shrunk, anti-aliased, to that longer side.
    Raises :class:`InputError` for anything Pillow cannot decode.
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, so a truncated file fails here and not later
            picture = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{path}: not a readable image ({error})") from None
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, picture.convert("RGBA"))
    picture = picture.convert("L")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.float32)


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
    Raises ``ValueError`` when there is no ink at all (a blank picture).
    """
    noise_level = float(np.percentile(border_pixels(stretched), 99))
    ink = stretched > min(noise_level + INK_MARGIN, 0.75)
    blobs, count = ndimage.label(ink, structure=np.ones((3, 3)))
    if count == 0:
        raise ValueError("blank image: no digit found")
    sizes = np.bincount(blobs.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_BLOB_FRACTION * sizes.max()) + 1
    strokes = np.isin(blobs, keep)
    return ndimage.binary_dilation(strokes, structure=np.ones((3, 3)), iterations=EDGE_PIXELS)


def stretch_contrast(gray: np.ndarray) -> np.ndarray:
    """``gray`` (H, W), light digit on dark, 0..255 -> float32 with background 0, strokes 1.

    The background is the median border pixel; the strokes are the brightest pixel after a
    3x3 median filter, so that one hot pixel does not set the scale. Raises ``ValueError``
    when the strokes are not ``MIN_CONTRAST`` brighter than the background (blank picture).
    """
    background = float(np.median(border_pixels(gray)))
    strokes = float(ndimage.median_filter(gray, size=3).max())
    if strokes - background < MIN_CONTRAST:
        raise ValueError("blank image: no digit found")
    stretched = (gray - background) / (strokes - background)
    return np.clip(stretched, 0.0, 1.0).astype(np.float32)


def normalize_digit(gray: np.ndarray, invert: InvertMode = "auto") -> np.ndarray:
    """A picture of one digit, grayscale (H, W) 0..255 -> an MNIST-style 28x28 image.

    Steps, as LeCun made MNIST: make it light-on-dark (see :func:`should_invert`), stretch
    the contrast, crop to the digit (:func:`digit_mask`), scale it so that its longer side
    is 20 px keeping the aspect ratio (anti-aliased), and paste it into a black 28x28 field
    with its center of mass in the middle. A 28x28 MNIST digit comes out (nearly) unchanged.
    Returns float32 0..255, shape (28, 28); raises ``ValueError`` for a blank picture.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise ValueError(f"expected a grayscale picture (H, W), got shape {gray.shape}")
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


# ---------------------------------------------------------------------------------------
# Batches of MNIST-style digits


def as_pixel_batch(array: np.ndarray, name: str) -> np.ndarray:
    """An (N, 28, 28) array of pixels -> float32 0..255, or :class:`InputError`.

    Integers must lie in 0..255. Floats whose maximum is <= 1.0 are on the [0, 1] scale
    (as ``data/prepared`` stores them) and are multiplied by 255; other floats must lie in
    0..255. (So an all-dark float image of 0..255 values below 1 would be read as [0, 1].)
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
    if np.issubdtype(array.dtype, np.floating) and high <= 1.0:
        pixels = pixels * np.float32(255.0)
        low, high = low * 255.0, high * 255.0
    if low < 0 or high > 255:
        raise InputError(f"{name}: pixel values {low:g}..{high:g} are outside 0..255")
    return pixels


def load_npy_batch(path: str | Path) -> np.ndarray:
    """A ``.npy`` file of (N, 28, 28) pixels -> float32 0..255 (see :func:`as_pixel_batch`)."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive loads as a mapping
        raise InputError(f"{path}: expected a .npy array, got {type(array).__name__}")
    return as_pixel_batch(array, str(path))


def load_idx_batch(path: str | Path) -> np.ndarray:
    """An IDX image file (raw or .gz) of (N, 28, 28) uint8 -> float32 0..255."""
    try:
        images = idx.read(path)
        idx.check_images(images, str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except idx.IdxFormatError as error:
        # idx names the file itself; say too what else the file could have been.
        raise InputError(f"{error} (not a PNG/JPEG image or .npy array either)") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    return images.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Inputs as the user names them


_PICTURE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG
_NPY_MAGIC = b"\x93NUMPY"


def input_kind(path: Path) -> Literal["picture", "npy", "idx"]:
    """How to read the file at ``path``: by its first bytes, else by its suffix, else IDX."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(8)
    except OSError:
        head = b""  # the loader will report why it cannot be read
    if head.startswith(_PICTURE_MAGIC):
        return "picture"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    # Unrecognized content: the name says what it was meant to be, so errors can say why not.
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "picture"
    if path.suffix.lower() == ".npy":
        return "npy"
    return "idx"


def load_input(path: str | Path, invert: InvertMode = "auto") -> np.ndarray:
    """The digits in one file -> float32 0..255, shape (N, 28, 28); N is 1 for a picture.

    Raises :class:`InputError` (message ``"<path>: <reason>"``) when it cannot.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; list it with expand_inputs()")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    kind = input_kind(path)
    if kind == "npy":
        return load_npy_batch(path)
    if kind == "idx":
        return load_idx_batch(path)
    gray = load_picture(path)
    try:
        digit = normalize_digit(gray, invert)
    except ValueError as error:  # a blank picture
        raise InputError(f"{path}: {error}") from None
    return digit[np.newaxis]


def expand_inputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[InputError]]:
    """Replace each directory by its PNG/JPEG files (sorted by name, not recursive).

    Returns the files in order and one :class:`InputError` per directory without pictures.
    Files are passed on as they are, even missing ones: :func:`load_input` reports those.
    """
    files: list[Path] = []
    errors: list[InputError] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        pictures = sorted(
            entry for entry in path.iterdir()
            if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES
        )
        if not pictures:
            errors.append(InputError(f"{path}: directory has no .png, .jpg or .jpeg files"))
        files.extend(pictures)
    return files, errors


def load_inputs(
    paths: Iterable[str | Path], invert: InvertMode = "auto"
) -> tuple[list[LoadedInput], list[InputError]]:
    """Load every input (directories expanded); the readable ones and one error per other."""
    files, errors = expand_inputs(paths)
    loaded: list[LoadedInput] = []
    for path in files:
        try:
            loaded.append(LoadedInput(str(path), load_input(path, invert)))
        except InputError as error:
            errors.append(error)
    return loaded, errors


# ---------------------------------------------------------------------------------------
# The model and its answers


def load_model(path: str | Path) -> Any:
    """The trained Keras model at ``path``, checked by :func:`mnist_pipeline.model.load_model`.

    Evaluate loads and runs the model through the same functions, so the two cannot disagree.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_silenced():
        from mnist_pipeline import model  # here, not at the top: importing TensorFlow takes seconds

    return model.load_model(path)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block; Python's ``sys.stderr`` included.

    TensorFlow's C++ start-up messages ("oneDNN custom operations are on", absl notices)
    come before its logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot stop them; they
    would bury the one-line errors the command prints. An exception still propagates and is
    reported after the block.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def prediction_rows(
    inputs: Sequence[LoadedInput], probabilities: np.ndarray
) -> list[tuple[str, int, int, float]]:
    """(input, index, label, confidence) per image; ``probabilities`` rows follow ``inputs``."""
    rows = []
    offset = 0
    for loaded in inputs:
        for index in range(len(loaded.images)):
            row = probabilities[offset + index]
            label = int(np.argmax(row))
            rows.append((loaded.name, index, label, float(row[label])))
        offset += len(loaded.images)
    return rows


def predict_rows(
    model: Any, inputs: Sequence[LoadedInput], batch_size: int = PREDICT_BATCH_SIZE
) -> list[tuple[str, int, int, float]]:
    """Classify the digits of all ``inputs`` in one batched model call; rows as below."""
    images = np.concatenate([loaded.images for loaded in inputs]) if inputs else np.zeros(
        (0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32
    )
    from mnist_pipeline.model import predict_probabilities  # TensorFlow is loaded by now

    return prediction_rows(inputs, predict_probabilities(model, images, batch_size))


def format_csv(rows: Iterable[tuple[str, int, int, float]]) -> str:
    """The CSV text: header ``input,index,label,confidence``, confidence to 4 decimals."""
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for name, index, label, confidence in rows:
        writer.writerow((name, index, label, f"{confidence:.4f}"))
    return buffer.getvalue()
