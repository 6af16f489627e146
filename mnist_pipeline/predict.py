"""Read the inputs of ``mnist-pipeline predict`` as MNIST-style digits, and classify them.

Accepted inputs (see :func:`load_input`):

- a PNG or JPEG picture of one digit, of any size; :mod:`mnist_pipeline.digit_image` makes
  it MNIST-style;
- an IDX image file (raw or gzip-compressed), as MNIST ships them: N x 28 x 28 uint8;
- a ``.npy`` array of shape (N, 28, 28): uint8 (or integers) 0..255, or floats, where a
  maximum <= 1.0 means the [0, 1] scale (multiplied by 255) and anything else 0..255;
- a directory: its PNG/JPEG pictures (:func:`expand_inputs`).

IDX and ``.npy`` batches are taken as already-MNIST-style digits and passed on unchanged.
Every loader returns float32 pixel values 0..255 of shape (N, 28, 28), light digit on dark,
which is what the model takes (its first layer does the 1/255 scaling).

Keras is imported only in :func:`load_model`, so the command line can answer ``--help`` and
report bad inputs without loading TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mnist_pipeline import digit_image, idx
from mnist_pipeline.digit_image import IMAGE_SIZE, InvertMode

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
PREDICT_BATCH_SIZE = 256


class InputError(ValueError):
    """An input cannot be turned into digits; the message starts with the input's path."""


@dataclass(frozen=True)
class LoadedInput:
    """One input as the user named it, and its digits: float32 0..255, shape (N, 28, 28)."""

    name: str
    images: np.ndarray


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
    try:
        digit = digit_image.picture_to_digit(path, invert)
    except digit_image.PictureError as error:  # unreadable, or no digit in it
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

