"""From raw IDX files to normalized, stratified train / val / test splits (numpy, no TensorFlow).

Everything here is a pure function of its arguments, except :func:`load_raw`, which reads
``data/raw``. The stage script ``stages/preprocess.py`` wires them together; train, evaluate and
predict never repeat this work: they read the prepared arrays, and the model carries
:data:`mnist_pipeline.prepared.PIXEL_SCALE` for raw input. What the prepared arrays are
(shapes, dtypes, range, classes) is defined in :mod:`mnist_pipeline.prepared`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnist_pipeline import drawn, fileio, idx, paths, pendigits, scans
from mnist_pipeline.params import PreprocessParams
from mnist_pipeline.pendigits import PenDigit
from mnist_pipeline.prepared import (  # normalize: the stage's, kept in the contract's module
    DRAWN_SOURCE,
    NUM_CLASSES,
    normalize,
    test_split,
)

# Independent random streams for the two splits carved from one seed.
_TEST_STREAM = 1
_VAL_STREAM = 2

Split = tuple[np.ndarray, np.ndarray]  # (images, labels)




@dataclass(frozen=True)
class RawDataset:
    """The decoded raw files: uint8 images (N, 28, 28) and uint8 labels (N,) per split, and
    the pen digits of UCI's training and test writers where they were downloaded."""

    name: str
    train: Split
    test: Split | None  # None for datasets without a published test split
    drawn: tuple[list[PenDigit], list[PenDigit]] | None = None  # (train writers, test writers)


def class_counts(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> list[int]:
    """How many labels fall in each class 0..num_classes-1 (zeros included)."""
    return [int(count) for count in np.bincount(labels, minlength=num_classes)[:num_classes]]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels`` into (keep, holdout), holding out ``fraction`` of each class.

    The holdout has ``round(fraction * N)`` items; each class gets its exact share
    ``fraction * n_class`` rounded down, and the items left over go to the classes with the
    largest remainders (ties to the lower class), so per-class proportions are as exact as
    whole items allow. A class with at least 2 items keeps at least one on each side (which
    may move the total by an item or two on tiny inputs). Which items of a class are held out
    is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same indices.

    Both index arrays are int64 and sorted, so each part keeps the original order.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = fraction * counts
    holdout_counts = np.floor(quotas).astype(np.int64)
    leftover = int(round(fraction * len(labels))) - int(holdout_counts.sum())
    # Stable sort on the negated remainders: largest first, ties to the lower class.
    by_remainder = np.argsort(-(quotas - holdout_counts), kind="stable")
    holdout_counts[by_remainder[:leftover]] += 1
    can_split = counts >= 2
    holdout_counts[can_split] = np.clip(holdout_counts[can_split], 1, counts[can_split] - 1)

    rng = np.random.default_rng(seed)
    holdout_parts = []
    for label, count in zip(classes, holdout_counts, strict=True):
        members = np.flatnonzero(labels == label)
        holdout_parts.append(rng.permutation(members)[:count])
    holdout = np.sort(np.concatenate(holdout_parts)).astype(np.int64)
    keep = np.setdiff1d(np.arange(len(labels), dtype=np.int64), holdout, assume_unique=True)
    return keep, holdout


def split_dataset(
    train: Split, test: Split | None, params: PreprocessParams, seed: int
) -> dict[str, Split]:
    """Raw uint8 (images, labels) -> {"train", "val", "test"} of (uint8 images, uint8 labels).

    With a published test split (``test`` given), test is that split untouched and val is
    ``params.val_fraction`` of ``train``, stratified. Without one (mnist-sample), a stratified
    test split of ``params.test_fraction`` of ``train`` is carved out first, then val takes
    ``params.val_fraction`` *of the original total* from the rest: both fractions read as
    shares of all the digits (5,000 with 0.2 / 0.1 -> 3,500 / 500 / 1,000). Seeded: the same
    inputs and seed give the same splits.
    """
    images, labels = train
    if test is None:
        rest, test_indices = stratified_split(labels, params.test_fraction, (seed, _TEST_STREAM))
        test = (images[test_indices], labels[test_indices])
        images, labels = images[rest], labels[rest]
        val_fraction = params.val_fraction / (1 - params.test_fraction)
    else:
        val_fraction = params.val_fraction
    train_indices, val_indices = stratified_split(labels, val_fraction, (seed, _VAL_STREAM))
    return {
        "train": (images[train_indices], labels[train_indices]),
        "val": (images[val_indices], labels[val_indices]),
        "test": test,
    }


def prepare_splits(raw: RawDataset, params: PreprocessParams, seed: int) -> dict[str, Split]:
    """The stage's whole computation: split, add the drawn digits and the scan-like copies,
    normalize each split.

    The drawn digits (``raw.drawn``) are split by writer; about ``params.scan_copies`` of the
    training digits (both sources) are added again as if scanned
    (:func:`scans.add_scan_copies`). Returns {"train", "val", "test"[, "test_drawn"]} of
    (float32 images in [0, 1], uint8 labels): train and val hold both sources (the model
    learns and is calibrated on both), and each source keeps a test split of its own
    (:func:`test_splits`). Splitting before normalizing copies uint8 arrays, a quarter of
    the bytes of float32 ones. (Labelled pictures, such as the page's corrections, are the
    read_corrections and finetune stages' work.)
    """
    splits = split_dataset(raw.train, raw.test, params, seed)
    others = {}
    if raw.drawn is not None:
        others[DRAWN_SOURCE] = drawn.drawn_splits(*raw.drawn, params.drawn, seed)
    for source, parts in others.items():
        for name in ("train", "val"):
            splits[name] = concatenate(splits[name], parts[name])
        if len(parts["test"][1]):
            splits[test_split(source)] = parts["test"]
    if params.scan_copies:  # the training digits of both sources again, as if scanned
        splits["train"] = scans.add_scan_copies(*splits["train"], params.scan_copies, seed)
    return {name: (normalize(images), labels) for name, (images, labels) in splits.items()}


def test_splits(dataset: str, splits: Mapping[str, Split]) -> dict[str, str]:
    """{source: prepared split} for every test split in ``splits``: the main dataset under
    its own name, the drawn digits under :data:`DRAWN_SOURCE`. Written to
    data/prepared/sources.json, which evaluate reads."""
    sources = {dataset: test_split(None)}
    if test_split(DRAWN_SOURCE) in splits:
        sources[DRAWN_SOURCE] = test_split(DRAWN_SOURCE)
    return sources


def concatenate(first: Split, second: Split) -> Split:
    """The images and labels of ``first`` followed by those of ``second``."""
    return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])


def split_metrics(dataset: str, splits: Mapping[str, Split]) -> dict[str, Any]:
    """Headline numbers for metrics/data.json: the dataset's name and each split's size.

    The per-class counts are plot data (:func:`class_count_table`), so that ``dvc metrics
    show`` and ``dvc exp show`` stay a few columns wide.
    """
    metrics: dict[str, Any] = {"dataset": dataset}
    for name, (_images, labels) in splits.items():
        metrics[name] = {"size": int(len(labels))}
    return metrics


def class_count_table(labels: np.ndarray) -> pd.DataFrame:
    """One row per class: digit, count; plots/class_counts/<split>.csv, drawn as bars."""
    return pd.DataFrame({"digit": np.arange(NUM_CLASSES), "count": class_counts(labels)})


def load_raw(directory: str | Path = paths.RAW_DIR) -> RawDataset:
    """Read and check the download stage's output: manifest.json and the IDX files.

    Raises FileNotFoundError (naming the file, pointing at `dvc repro download`) for a
    missing file and :class:`idx.IdxFormatError` (naming the file) for corrupt ones, images
    that are not N x 28 x 28, labels outside 0..9 or image and label counts that disagree.
    """
    directory = Path(directory)
    name, splits, drawn_files = read_manifest(directory / paths.RAW_MANIFEST.name)
    train = _read_pair(directory, "train")
    # A dataset without a test split of its own (mnist-sample) gets one carved out of train.
    test = _read_pair(directory, "test") if "test" in splits else None
    return RawDataset(name=name, train=train, test=test,
                      drawn=read_drawn(directory, drawn_files))


def read_drawn(directory: Path, listed: tuple[str, ...]
               ) -> tuple[list[PenDigit], list[PenDigit]] | None:
    """The pen digits of UCI's training and test writers, where the download stage fetched
    them (``listed``: manifest.json's "drawn"); None where it did not. PenFileError names the
    file, the line and the problem."""
    if not listed:
        return None
    parsed = []
    for pen_file in pendigits.FILES:
        path = directory / pen_file.name
        if pen_file.name not in listed or not path.is_file():
            raise FileNotFoundError(_missing(path))
        try:
            text = path.read_text(encoding="ascii")
        except UnicodeDecodeError as error:
            raise pendigits.PenFileError(f"{path}: not UNIPEN text (byte {error.start} is not "
                                         "ASCII)") from None
        prefix = "tra" if pen_file.split == "train" else "tes"
        parsed.append(pendigits.parse(text, str(path), prefix))
    return parsed[0], parsed[1]


def read_manifest(manifest_path: str | Path
                  ) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The ``dataset`` name, the published ``splits`` and the pen-digit files fetched beside
    the dataset (``drawn``; empty without them) in the download stage's manifest."""
    manifest_path = Path(manifest_path)
    try:
        manifest = fileio.read_json(manifest_path)
    except FileNotFoundError:
        raise FileNotFoundError(_missing(manifest_path)) from None
    except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{manifest_path}: not valid JSON ({error})") from None
    name = manifest.get("dataset") if isinstance(manifest, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{manifest_path}: no \"dataset\" name; run `dvc repro download` again")
    splits = manifest.get("splits")
    if not isinstance(splits, list) or "train" not in splits:
        raise ValueError(f"{manifest_path}: no \"splits\" list with \"train\" in it; run "
                         "`dvc repro download` again")
    drawn_files = manifest.get("drawn") or []
    if not isinstance(drawn_files, list):
        raise ValueError(f"{manifest_path}: \"drawn\" is not a list of files; run `dvc repro "
                         "download` again")
    return name, tuple(splits), tuple(drawn_files)


def _read_pair(directory: Path, split: str) -> Split:
    images_path = directory / paths.RAW_FILES[(split, "images")]
    labels_path = directory / paths.RAW_FILES[(split, "labels")]
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    idx.check_images(images, str(images_path))
    idx.check_labels(labels, str(labels_path))
    if len(images) != len(labels):
        raise idx.IdxFormatError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


def _read_idx(path: Path) -> np.ndarray:
    try:
        return idx.read(path)
    except FileNotFoundError:
        raise FileNotFoundError(_missing(path)) from None


def _missing(path: Path) -> str:
    return f"{path}: missing; run `dvc repro download` first"
