"""UCI's pen-drawn digits: the two files, how to verify them and how to read them (pure, no I/O).

"Pen-Based Recognition of Handwritten Digits" (E. Alpaydin and F. Alimoglu, UCI Machine
Learning Repository, 1998, doi:10.24432/C5MG6K, CC BY 4.0): 44 writers drew 250 digits each on
a tablet, in 500x500 tablet-unit boxes. The original trajectories are UNIPEN text:

    .SEGMENT DIGIT 12 ? "7"      a digit labelled 7
    .COMMENT 7 23 254            its label again, its writer (23), a count
    .PEN_DOWN                    one stroke: "x y" lines, y pointing UP
     267  333
    .PEN_UP

UCI keeps 30 writers for training (``pendigits-orig.tra``) and 14 others for writer-independent
tests (``pendigits-orig.tes``), and serves both inside one zip as ``compress`` (``.Z``) members.
Each file is verified by the sha256 of its decompressed content, as the MNIST files are, so a
local copy, a mirror's ``.Z`` or UCI's zip all pass and a changed byte does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mnist_pipeline.prepared import NUM_CLASSES

UCI_ZIP = ("https://archive.ics.uci.edu/static/public/81/"
           "pen+based+recognition+of+handwritten+digits.zip")
# The largest coordinate read, in tablet units: float32 (the strokes' type) holds every whole
# number up to 2**24 exactly. UCI's are under 1,000; a larger one is a hand-edited file, and
# past float32's range it would turn into infinity and draw nothing.
MAX_COORDINATE = 2**24


@dataclass(frozen=True)
class PenFile:
    """One UNIPEN file of the dataset: its name, digest, size and what it holds."""

    name: str
    sha256: str
    size: int  # bytes, decompressed
    split: str  # "train" (writers to learn from) or "test" (writers never trained on)
    digits: int
    writers: int


TRAIN_FILE = PenFile("pendigits-orig.tra",
                     "a66225d68d7d68591e62944df1ad33b3f5aa608e2df2505844b41f5568a80da4",
                     3_641_673, "train", 7_494, 30)
TEST_FILE = PenFile("pendigits-orig.tes",
                    "ddb1c19e277a56c7ffe682cc024d6ab73696f9adcc1643ef9ed5aa753007e081",
                    1_661_044, "test", 3_498, 14)
FILES = (TRAIN_FILE, TEST_FILE)


class PenFileError(ValueError):
    """A pen file that cannot be used; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class PenDigit:
    """One drawn digit: its label, its writer and its strokes.

    ``writer`` is unique across the dataset's files (``"tra-23"``, ``"tes-4"``): each file
    numbers its own writers, and a writer id must never reach two splits. ``strokes`` are
    float32 (n, 2) arrays of (x, y) tablet units, y pointing up, each with at least one point.
    """

    label: int
    writer: str
    strokes: tuple[np.ndarray, ...]


_SEGMENT = re.compile(r'\.SEGMENT\s+DIGIT\s+\S+\s+\S+\s+"([^"]*)"\s*$')
_POINT = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)\s*$")


def parse(text: str, name: str, writer_prefix: str) -> list[PenDigit]:
    """The digits of one UNIPEN file's ``text``, in file order.

    ``name`` is used in messages; ``writer_prefix`` makes writer ids unique across files.
    Raises :class:`PenFileError` ("<name>: line N: ...") for a label that is not one digit
    0-9, a digit without a writer or without a stroke, a stroke without points, a point
    line that is not two numbers or has a coordinate beyond ``MAX_COORDINATE``, points
    outside a pen stroke, or a file with no digit.
    """
    digits: list[PenDigit] = []
    label: int | None = None
    writer: str | None = None
    strokes: list[np.ndarray] = []
    points: list[tuple[float, float]] | None = None  # the open stroke's, between PEN_DOWN/UP
    opened_at = 0

    def close_digit(line_number: int) -> None:
        if label is None:
            return
        if points is not None:
            raise PenFileError(f"{name}: line {line_number}: a stroke is not closed by .PEN_UP")
        if writer is None:
            raise PenFileError(f"{name}: line {opened_at}: digit without a .COMMENT naming "
                               "its writer")
        if not strokes:
            raise PenFileError(f"{name}: line {opened_at}: digit {label} has no stroke")
        digits.append(PenDigit(label, writer, tuple(strokes)))

    lines = text.splitlines()
    for line_number, line in enumerate(lines, start=1):
        keyword = line.split(maxsplit=1)[0] if line.strip() else ""
        if keyword == ".SEGMENT":
            close_digit(line_number)
            match = _SEGMENT.match(line)
            if match is None or not re.fullmatch(r"\d", match.group(1)):
                shown = match.group(1) if match else line.strip()[:40]
                raise PenFileError(f"{name}: line {line_number}: unknown label {shown!r} "
                                   f"(expected one digit 0-{NUM_CLASSES - 1})")
            label, writer, strokes, opened_at = int(match.group(1)), None, [], line_number
        elif keyword == ".COMMENT" and label is not None:
            fields = line.split()
            if len(fields) < 3 or not fields[2].isdigit():
                raise PenFileError(f"{name}: line {line_number}: expected '.COMMENT label "
                                   "writer count', got " + repr(line.strip()[:40]))
            writer = f"{writer_prefix}-{int(fields[2])}"
        elif keyword == ".PEN_DOWN":
            if label is None or points is not None:
                raise PenFileError(f"{name}: line {line_number}: .PEN_DOWN outside a digit "
                                   "or inside another stroke")
            points = []
        elif keyword == ".PEN_UP":
            if points is None:
                raise PenFileError(f"{name}: line {line_number}: .PEN_UP without .PEN_DOWN")
            if not points:
                raise PenFileError(f"{name}: line {line_number}: a stroke without points")
            strokes.append(np.asarray(points, dtype=np.float32))
            points = None
        elif keyword.startswith("."):
            continue  # .INCLUDE, .LEXICON, .HIERARCHY, .DT: nothing the pictures need
        elif keyword:
            match = _POINT.match(line)
            if match is None:
                raise PenFileError(f"{name}: line {line_number}: expected 'x y', got "
                                   f"{line.strip()[:40]!r}")
            if points is None:
                raise PenFileError(f"{name}: line {line_number}: a point outside a stroke")
            points.append(point(match.group(1), match.group(2), f"{name}: line {line_number}"))
    close_digit(len(lines))
    if not digits:
        raise PenFileError(f"{name}: no digit in it (expected UNIPEN .SEGMENT DIGIT entries)")
    return digits


def point(x: str, y: str, where: str) -> tuple[float, float]:
    """The numbers of a point line's two fields, or PenFileError (``where``: file and line)
    for one beyond ``MAX_COORDINATE``: float() reads 400 digits as infinity, silently."""
    for field in (x, y):
        if not abs(float(field)) <= MAX_COORDINATE:
            shown = field if len(field) <= 20 else f"{field[:12]}... ({len(field)} characters)"
            raise PenFileError(f"{where}: coordinate {shown} out of range (tablet units are "
                               f"at most {MAX_COORDINATE:,} either way)")
    return float(x), float(y)


def check_count(digits: list[PenDigit], pen_file: PenFile) -> None:
    """PenFileError unless ``digits`` are as many as the file publishes. The digest already
    proves the published file; this says what is wrong in words for a file whose digest was
    given by hand (a test's, or a copy of one's own)."""
    if len(digits) != pen_file.digits:
        raise PenFileError(f"{pen_file.name}: {len(digits):,} digits, expected "
                           f"{pen_file.digits:,}")


def check_writers_apart(splits: dict[str, list[str]]) -> None:
    """PenFileError naming a writer whose digits reach two splits ({split: writer ids})."""
    seen: dict[str, str] = {}
    for split, writers in splits.items():
        for writer in set(writers):
            if writer in seen and seen[writer] != split:
                raise PenFileError(f"writer {writer} is in both the {seen[writer]} and the "
                                   f"{split} split: a writer's digits must stay in one split")
            seen[writer] = split
