"""Read the inputs of ``mnist-pipeline predict`` as MNIST-style digits, and classify them.

Accepted inputs (see :func:`load_input`):

- a PNG or JPEG picture of one digit, of any size: :mod:`mnist_pipeline.pictures` reads
  it and :mod:`mnist_pipeline.digit_image` makes it MNIST-style;
- an IDX image file (raw or gzip-compressed), as MNIST ships them: N x 28 x 28 uint8;
- a ``.npy`` array of shape (N, 28, 28) of pixels on the 0..255 scale, integers or floats
  alike (one scale, the model's: nothing is guessed from the values; an array on the [0, 1]
  scale, as ``data/prepared`` stores them, must be multiplied by 255 first), where a blank
  digit is refused as a blank picture is;
- a directory: its PNG/JPEG pictures (:func:`expand_inputs`).

IDX and ``.npy`` batches are taken as already-MNIST-style digits and passed on unchanged,
after the pixel check that ``serve`` shares (:func:`mnist_pipeline.app.arrays.as_pixel_batch`).
Every loader returns float32 pixel values 0..255 of shape (N, 28, 28), light digit on dark,
which is what the model takes (its first layer does the 1/255 scaling).

The model is loaded and run by :mod:`mnist_pipeline.inference` (TensorFlow only for a
``.keras`` file), so the command line answers ``--help`` and reports bad inputs at once.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from mnist_pipeline import idx, inference, pictures, uncertainty
from mnist_pipeline.app.arrays import (  # the pixel check that serve shares
    BlankDigitError,  # noqa: F401 - raised through as_pixel_batch; callers catch predict's
    InputError,
    as_pixel_batch,
)
from mnist_pipeline.digit_image import IMAGE_SIZE, InvertMode

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# Pictures that are not read, but are recognized by name too, so the error says why.
OTHER_PICTURE_SUFFIXES = frozenset({".gif", ".bmp", ".tif", ".tiff", ".webp"})
CSV_HEADER = ("input", "index", "label", "confidence", "uncertain")
# A CSV cell that starts with one of these is a formula to a spreadsheet (OWASP: CSV
# injection), and a file may be named `=HYPERLINK(...)`: such a text cell is written after a
# single quote, which makes the spreadsheet show it as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# An IDX or .npy input may hold this many digits (MNIST has 70,000): 314 MB as float32. A
# header declaring more is refused before any data is read.
MAX_DIGITS_PER_INPUT = 100_000


@dataclass(frozen=True)
class LoadedInput:
    """One input as the user named it, and its digits: float32 0..255, shape (N, 28, 28)."""

    name: str
    images: np.ndarray


# ---------------------------------------------------------------------------------------
# Batches of MNIST-style digits


def load_npy_batch(stream: BinaryIO, name: str) -> np.ndarray:
    """A ``.npy`` stream of (N, 28, 28) pixels -> float32 0..255 (see :func:`as_pixel_batch`).

    The header is checked before any data is read: no pickled objects, the shape, at most
    ``MAX_DIGITS_PER_INPUT`` digits; then only the bytes it declares are read, in chunks,
    so a forged header claiming (10**9, 28, 28) costs nothing.
    """
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not read")
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{name}: not a readable .npy array ({error})") from None
    if dtype.hasobject:
        raise InputError(f"{name}: not a readable .npy array (it holds Python objects, and "
                         "pickles are never loaded)")
    if len(shape) != 3 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"{name}: expected images of shape (N, 28, 28), got {shape}")
    check_digit_count(shape[0], name)
    declared = math.prod(shape) * dtype.itemsize
    data = idx.read_at_most(stream, declared)
    if len(data) < declared:
        raise InputError(f"{name}: truncated: header says shape {shape} of {dtype} "
                         f"({declared:,} bytes of data), file has {len(data):,}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return as_pixel_batch(array, name)


def load_idx_batch(stream: BinaryIO, name: str) -> np.ndarray:
    """An IDX image stream (raw or .gz) of (N, 28, 28) uint8 -> float32 0..255.

    A header declaring more than ``MAX_DIGITS_PER_INPUT`` digits is refused before reading.
    """
    head = idx.peek(stream, 4)
    try:
        images = idx.read(stream, name, max_bytes=MAX_DIGITS_PER_INPUT * IMAGE_SIZE**2)
        idx.check_images(images, name)
    except idx.IdxFormatError as error:
        # idx names the file itself; where it is not IDX, say what else it could have been.
        hint = "" if idx.has_magic(head) else " (not a PNG/JPEG image or .npy array either)"
        raise InputError(f"{error}{hint}") from None
    check_digit_count(len(images), name)
    return images.astype(np.float32)


def check_digit_count(count: int, name: str) -> None:
    """Refuse a batch of more than ``MAX_DIGITS_PER_INPUT`` digits."""
    if count > MAX_DIGITS_PER_INPUT:
        raise InputError(f"{name}: {count:,} digits; at most {MAX_DIGITS_PER_INPUT:,} per input "
                         "are read (split the file)")


# ---------------------------------------------------------------------------------------
# Inputs as the user names them


_NPY_MAGIC = b"\x93NUMPY"


def input_kind(path: Path, head: bytes) -> Literal["picture", "npy", "idx"]:
    """How to read the file at ``path`` whose first bytes are ``head``: by those bytes,
    else by the file's suffix, else IDX."""
    if pictures.picture_format(head) is not None:
        return "picture"  # PNG, JPEG, or another format that pictures names in its error
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if idx.has_magic(head):
        return "idx"
    # Unrecognized content: the name says what it was meant to be, so errors can say why not.
    if path.suffix.lower() in IMAGE_SUFFIXES | OTHER_PICTURE_SUFFIXES:
        return "picture"
    if path.suffix.lower() == ".npy":
        return "npy"
    return "idx"


def load_input(path: str | Path, invert: InvertMode = "auto") -> np.ndarray:
    """The digits in one file -> float32 0..255, shape (N, 28, 28); N is 1 for a picture.

    The file is opened once and its kind told from its first bytes without consuming them,
    so a pipe or FIFO (``<(cat digit.png)``) is read like a file.
    Raises :class:`InputError` (message ``"<path>: <reason>"``) when it cannot.
    """
    path = Path(path)
    name = str(path)
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, after the kind is known
    except FileNotFoundError:
        reason = "broken symbolic link" if path.is_symlink() else "no such file"
        raise InputError(f"{name}: {reason}") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory; list it with expand_inputs()") from None
    except OSError as error:  # permissions, a symbolic link loop, ...
        raise InputError(f"{name}: cannot read ({error.strerror or error})") from None
    try:
        with stream:
            kind = input_kind(path, idx.peek(stream, 12))
            if kind == "npy":
                return load_npy_batch(stream, name)
            if kind == "idx":
                return load_idx_batch(stream, name)
            digit = pictures.picture_to_digit(stream, invert)
    except pictures.PictureError as error:  # unreadable, too large, or no digit in it
        raise InputError(f"{name}: {error}") from None
    except OSError as error:  # the disk, not the content
        raise InputError(f"{name}: cannot read ({error.strerror or error})") from None
    return digit[np.newaxis]


def expand_inputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[InputError]]:
    """Replace each directory by its PNG/JPEG files (sorted by name, not recursive).

    Returns the files in order and one :class:`InputError` per directory without pictures.
    Files are passed on as they are, even missing ones: :func:`load_input` reports those;
    so are a directory's symbolic links with a picture's name that lead nowhere (broken,
    or a loop), so that the error says what they are.
    """
    files: list[Path] = []
    errors: list[InputError] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        pictures = sorted(
            entry for entry in path.iterdir()
            if entry.suffix.lower() in IMAGE_SUFFIXES
            and (entry.is_file() or (entry.is_symlink() and not entry.is_dir()))
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


def prediction_rows(
    inputs: Sequence[LoadedInput], probabilities: np.ndarray,
    min_confidence: float = uncertainty.MIN_CONFIDENCE,
) -> list[tuple[str, int, int, float, bool]]:
    """(input, index, label, confidence, uncertain) per image; ``probabilities`` rows follow
    ``inputs``. ``uncertain``: not a digit, or the model is unsure, its top probability below
    ``min_confidence``, the model's own threshold (:mod:`mnist_pipeline.uncertainty`)."""
    rows = []
    offset = 0
    for loaded in inputs:
        answers = probabilities[offset:offset + len(loaded.images)]
        flags = uncertainty.uncertain(loaded.images, answers, min_confidence)
        for index, (row, flag) in enumerate(zip(answers, flags, strict=True)):
            label = int(np.argmax(row))
            rows.append((loaded.name, index, label, float(row[label]), bool(flag)))
        offset += len(loaded.images)
    return rows


def predict_rows(
    classifier: inference.Classifier, inputs: Sequence[LoadedInput],
    batch_size: int = inference.DEFAULT_BATCH_SIZE,
) -> list[tuple[str, int, int, float, bool]]:
    """Classify the digits of all ``inputs`` in batches of ``batch_size``; rows as above."""
    images = np.concatenate([loaded.images for loaded in inputs]) if inputs else np.zeros(
        (0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32
    )
    return prediction_rows(inputs, classifier.probabilities(images, batch_size),
                           classifier.min_confidence)


def format_csv(rows: Iterable[tuple[str, int, int, float, bool]]) -> str:
    """The CSV text of :func:`prediction_rows`: header ``input,index,label,confidence,
    uncertain``, confidence to 4 decimals, uncertain ``true``/``false``. The input's name,
    the one cell of free text, is made :func:`spreadsheet_safe`; numbers stay numbers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    # The writer quotes a cell holding its own line terminator only, but a carriage return
    # ends a row too, for readers and spreadsheets (`a.png\r=cmd()` would start a row with
    # a formula): a row holding one is written all quoted.
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(CSV_HEADER)
    for name, index, label, confidence, uncertain in rows:
        (quoted if "\r" in name else writer).writerow(
            (spreadsheet_safe(name), index, label, f"{confidence:.4f}", str(uncertain).lower()))
    return buffer.getvalue()


def spreadsheet_safe(cell: str) -> str:
    """``cell`` after a single quote when it starts as a formula would (:data:`FORMULA_STARTS`,
    OWASP's rule against CSV injection), else as it is."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell
