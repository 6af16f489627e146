"""Folders of labelled pictures: the format, and reading one into MNIST-style digits.

A folder holds pictures of single digits and ``labels.csv`` with the columns ``file,label``
and optionally ``writer`` (who drew it: the page keeps a random id per browser) and ``time``.
``mnist-pipeline serve --collect DIR`` writes such a folder from the corrections people make
on the page; a scanner or a hand-made set can too. The pipeline reads the folders named in
``corrections.folders`` (under ``data/extra/``, read_corrections' dependency): every picture goes
through ``pictures.picture_to_digit``, as any picture sent to the model does.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_pipeline.pictures import PictureError, picture_to_digit
from mnist_pipeline.prepared import NUM_CLASSES

LABELS_FILE = "labels.csv"
COLUMNS = ("file", "label", "writer", "time")
REQUIRED_COLUMNS = ("file", "label")
# A file named in labels.csv: a plain name in the folder, nothing above or below it.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A label: one ASCII digit (str.isdigit() also takes '²' and '⑦', which int() refuses).
_LABEL = re.compile(r"[0-9]")
# labels.csv is read whole: 10,000 rows are under 1 MiB.
MAX_LABELS_BYTES = 64 << 20


class LabelledFolderError(ValueError):
    """A folder of labelled pictures that cannot be used: the folder, the row, the problem."""


@dataclass(frozen=True)
class LabelledPictures:
    """One folder read: uint8 digits (N, 28, 28), uint8 labels (N,), a writer per picture
    (the folder's name and the row's writer, or the row's file where none is given)."""

    images: np.ndarray
    labels: np.ndarray
    writers: tuple[str, ...]
    # The row's time (ISO 8601, as serve writes it), or "" where labels.csv has none: the
    # order in which a writer's pictures came (rows without a time keep the file's order).
    times: tuple[str, ...] = ()


def read_folder(folder: str | Path) -> LabelledPictures:
    """Every row of ``folder``/labels.csv as an MNIST-style digit; LabelledFolderError names
    the folder, the row (its line in labels.csv) and the problem for the first bad row: a
    missing or unreadable labels.csv, a missing column, a file that is not a plain name in
    the folder or is missing, a file named twice, a label that is not 0-9, a picture that
    cannot be read or holds no digit."""
    folder = Path(folder)
    rows = read_labels(folder)
    images, labels, writers, times = [], [], [], []
    for line, row in rows:
        where = f"{folder / LABELS_FILE}: line {line} ({row['file']})"
        try:
            digit = picture_to_digit(folder / row["file"], invert="auto")
        except (PictureError, OSError) as error:
            raise LabelledFolderError(f"{where}: {error}") from None
        images.append(np.round(digit).astype(np.uint8))
        labels.append(int(row["label"]))
        writers.append(f"{folder.name}/{row.get('writer') or row['file']}")
        times.append(row.get("time") or "")
    if not images:
        return LabelledPictures(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), (), ())
    return LabelledPictures(np.stack(images), np.array(labels, np.uint8), tuple(writers),
                            tuple(times))


def read_labels(folder: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of ``folder``/labels.csv with their line numbers, checked (see read_folder)."""
    path = folder / LABELS_FILE
    if not folder.is_dir():
        raise LabelledFolderError(f"{folder}: not a folder (corrections.folders names folders "
                                  "under data/extra/)")
    try:
        reader = csv.DictReader(io.StringIO(read_labels_text(folder), newline=""))
        missing = [name for name in REQUIRED_COLUMNS if name not in (reader.fieldnames or ())]
        if missing:
            raise LabelledFolderError(f"{path}: line 1: no {', '.join(missing)} column "
                                      f"(expected {','.join(COLUMNS)})")
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise LabelledFolderError(f"{path}: not a readable CSV ({error})") from None
    seen: dict[str, int] = {}
    for line, row in rows:
        name, label = (row.get("file") or "").strip(), (row.get("label") or "").strip()
        where = f"{path}: line {line}"
        if not _PLAIN_NAME.fullmatch(name):
            raise LabelledFolderError(f"{where}: file {name[:40]!r} is not a plain file name "
                                      "in the folder")
        if name in seen:
            raise LabelledFolderError(f"{where}: {name} is named again (first on line "
                                      f"{seen[name]})")
        seen[name] = line
        if not (_LABEL.fullmatch(label) and int(label) < NUM_CLASSES):
            raise LabelledFolderError(f"{where} ({name}): label {label[:20]!r} is not a digit "
                                      f"0-{NUM_CLASSES - 1}")
        if not (folder / name).is_file():
            raise LabelledFolderError(f"{where} ({name}): no such file in {folder}")
        row["file"], row["label"] = name, label
    return rows


def read_labels_text(folder: Path) -> str:
    """The text of ``folder``/labels.csv, a byte-order mark dropped (a spreadsheet saves
    one), or LabelledFolderError in one line: missing, not a regular file (a folder, a FIFO:
    opened without waiting for a writer, never read), over :data:`MAX_LABELS_BYTES`, not
    UTF-8. A link to a regular file is followed (DVC may link its cache)."""
    path = folder / LABELS_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise LabelledFolderError(f"{path}: missing (a folder of labelled pictures holds "
                                  f"{LABELS_FILE} with columns {','.join(COLUMNS)})") from None
    except OSError as error:
        raise LabelledFolderError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device")
            raise LabelledFolderError(f"{path}: {kind}, not a file ({LABELS_FILE} must be a "
                                      "regular file)")
        with open(descriptor, "rb", closefd=False) as stream:
            data = stream.read(MAX_LABELS_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(data) > MAX_LABELS_BYTES:
        raise LabelledFolderError(f"{path}: over {MAX_LABELS_BYTES >> 20} MiB: not a "
                                  f"{LABELS_FILE} of labelled pictures")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LabelledFolderError(f"{path}: not UTF-8 text ({error})") from None


def split_by_time(writers: Sequence[str], times: Sequence[str], test_fraction: float
                  ) -> dict[str, np.ndarray]:
    """Indices of the pictures for {"train", "test"}: of each writer's pictures in the order
    they came (``times``, ISO 8601 or "", then the rows' order), the latest
    ``test_fraction`` (rounded down, at least one of three or more, never all) are the test
    split, so that the score answers "does it read my next digit now?"; every writer's
    earlier pictures are learned."""
    if len(times) != len(writers):
        raise ValueError(f"{len(writers)} writers but {len(times)} times")
    test: list[int] = []
    by_writer: dict[str, list[int]] = {}
    for index, writer in enumerate(writers):
        by_writer.setdefault(writer, []).append(index)
    for indices in by_writer.values():
        ordered = sorted(indices, key=lambda index: (times[index], index))
        count = int(test_fraction * len(ordered))
        if len(ordered) >= 3 and test_fraction > 0:
            count = max(count, 1)
        count = min(count, len(ordered) - 1)
        test.extend(ordered[len(ordered) - count:] if count else [])
    test_index = np.array(sorted(test), dtype=np.int64)
    return {"train": np.setdiff1d(np.arange(len(writers), dtype=np.int64), test_index),
            "test": test_index}
