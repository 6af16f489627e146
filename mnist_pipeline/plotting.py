"""Digit galleries of a trained model: each source's most confidently wrong test digits, and a
sample of the dataset's.

Only what DVC's plot templates cannot draw: the training curves, the confusion matrices and
the per-digit bars are dvc.yaml's plots of dvclive's TSVs, plots/predictions/<source>.csv
and plots/per_class/<source>.csv. A reader checks the evaluate stage's predictions; pure
helpers pick what to draw (the most confidently wrong digits, a seeded sample); figure
builders return matplotlib :class:`~matplotlib.figure.Figure` objects, named by the path
they are saved under (``misclassified/<source>``: one gallery per test source, so that the
pen-drawn digits' errors are seen as the dataset's are); and :func:`save_figures` writes
them as PNGs, atomically, removing PNGs it no longer makes.

Figures are built with the object-oriented API (no pyplot): nothing touches a global figure
registry or an interactive backend, PNGs are rendered by Agg, and no figure needs closing.
Nothing here imports TensorFlow: plotting reads only files, so it starts in a second.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mnist_pipeline.fileio import atomic_path
from mnist_pipeline.prepared import NUM_CLASSES

PREDICTION_COLUMNS = ("index", "actual", "predicted", "confidence")
# A source's name becomes a file name (misclassified/<source>.png): letters, digits, "_",
# "-" and "." only, not starting with "." (no hidden file, no way out of the folder).
SOURCE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
MISCLASSIFIED = "misclassified"  # folder of the per-source galleries
SAMPLE_PREDICTIONS = "sample_predictions"

# Sizes in inches: the galleries grow with their cell count (see grid_shape).
NO_ERRORS_SIZE = (6.0, 2.5)
GALLERY_CELL_SIZE = (1.6, 1.8)
GALLERY_TITLE_HEIGHT = 0.7

WRONG_COLOR = "#c62828"
RIGHT_COLOR = "#1b1b1b"
# No matplotlib version in the PNG metadata: a library upgrade alone must not change the
# git-tracked images.
PNG_METADATA = {"Software": None}


# ---------------------------------------------------------------------------------------
# Reading the evaluate stage's output


def read_predictions(path: str | Path) -> pd.DataFrame:
    """The evaluate stage's ``index,actual,predicted,confidence`` CSV, checked.

    ``index`` is the row in the test arrays, labels are ints in 0..9 and ``confidence`` is
    the predicted class's probability in [0, 1].
    """
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run `dvc repro evaluate` first") from None
    missing = set(PREDICTION_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    if table.empty:
        raise ValueError(f"{path}: no predictions")
    table = table[list(PREDICTION_COLUMNS)].astype(
        {"index": int, "actual": int, "predicted": int, "confidence": float}
    )
    for column in ("actual", "predicted"):
        if not table[column].between(0, NUM_CLASSES - 1).all():
            raise ValueError(f"{path}: {column} has labels outside 0..{NUM_CLASSES - 1}")
    if not table["confidence"].between(0, 1).all():
        raise ValueError(f"{path}: confidence has values outside [0, 1]")
    return table


def check_predictions_match(predictions: pd.DataFrame, labels: np.ndarray) -> None:
    """Raise ValueError unless every prediction's ``actual`` is ``labels[index]``.

    Catches a plots/predictions/<source>.csv written for another split or another dataset
    than the arrays.
    """
    index = predictions["index"].to_numpy()
    if index.min() < 0 or index.max() >= len(labels):
        raise ValueError(
            f"predictions index {index.min()}..{index.max()} is outside the "
            f"{len(labels)} test samples; rerun `dvc repro evaluate`"
        )
    mismatched = int((labels[index] != predictions["actual"].to_numpy()).sum())
    if mismatched:
        raise ValueError(
            f"{mismatched} predictions disagree with the test labels on `actual`; "
            "the predictions are stale: rerun `dvc repro evaluate`"
        )


# ---------------------------------------------------------------------------------------
# What to draw (pure)


def most_confident_errors(predictions: pd.DataFrame, count: int) -> pd.DataFrame:
    """Up to ``count`` wrong predictions, the most confident first (ties: lower index first)."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    return wrong.sort_values(["confidence", "index"], ascending=[False, True], kind="stable").head(
        count
    )


def sample_rows(num_rows: int, count: int, seed: int) -> np.ndarray:
    """``min(count, num_rows)`` distinct positions in 0..num_rows-1, drawn with ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=min(count, num_rows), replace=False))


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of a near-square gallery for ``count`` images, at most 10 columns."""
    columns = min(10, max(1, math.ceil(math.sqrt(count))))
    return max(1, math.ceil(count / columns)), columns


def gallery_figsize(count: int) -> tuple[float, float]:
    """Figure size in inches of a gallery of ``count`` digits."""
    if count == 0:
        return NO_ERRORS_SIZE
    rows, columns = grid_shape(count)
    width, height = GALLERY_CELL_SIZE
    return (max(columns * width, 4.0), rows * height + GALLERY_TITLE_HEIGHT)


# ---------------------------------------------------------------------------------------
# Figures


def _digit_gallery(images: np.ndarray, titles: list[str], colors: list[str], suptitle: str,
                   dpi: int) -> Figure:
    figure = Figure(figsize=gallery_figsize(len(images)), dpi=dpi, layout="constrained")
    rows, columns = grid_shape(len(images))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image, title, color in zip(axes, images, titles, colors, strict=False):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10, color=color)
    figure.suptitle(suptitle, fontsize=12)
    return figure


def misclassified_figure(images: np.ndarray, predictions: pd.DataFrame, count: int,
                         dpi: int, source: str = "") -> Figure:
    """The ``count`` most confidently wrong digits, each titled "true -> predicted (conf%)";
    the title names ``source``, the test source they come from."""
    errors = most_confident_errors(predictions, count)
    total_errors = int((predictions["actual"] != predictions["predicted"]).sum())
    of_source = f" of {source}" if source else ""
    if errors.empty:
        figure = Figure(figsize=NO_ERRORS_SIZE, dpi=dpi)
        figure.text(0.5, 0.5, f"No errors: all {len(predictions)} test digits{of_source}\n"
                    "were classified correctly", ha="center", va="center", fontsize=14)
        return figure
    titles = [f"{row.actual} -> {row.predicted} ({100 * row.confidence:.0f}%)"
              for row in errors.itertuples()]
    return _digit_gallery(
        images[errors["index"].to_numpy()], titles, [WRONG_COLOR] * len(errors),
        f"Most confidently wrong test digits{of_source}: {len(errors)} of {total_errors} "
        f"errors in {len(predictions)}\ntrue -> predicted (confidence)", dpi,
    )


def sample_predictions_figure(images: np.ndarray, predictions: pd.DataFrame, count: int,
                              seed: int, dpi: int) -> Figure:
    """``count`` test digits drawn with ``seed``, titled with their prediction; wrong in red."""
    sample = predictions.iloc[sample_rows(len(predictions), count, seed)]
    wrong = (sample["actual"] != sample["predicted"]).to_numpy()
    titles = [
        f"{row.predicted}, true {row.actual}" if is_wrong
        else f"{row.predicted} ({100 * row.confidence:.0f}%)"
        for row, is_wrong in zip(sample.itertuples(), wrong, strict=True)
    ]
    colors = [WRONG_COLOR if is_wrong else RIGHT_COLOR for is_wrong in wrong]
    return _digit_gallery(
        images[sample["index"].to_numpy()], titles, colors,
        f"Random test digits (seed {seed}): predicted class, {int(wrong.sum())} wrong in red",
        dpi,
    )


def make_figures(tests: Mapping[str, tuple[pd.DataFrame, np.ndarray, np.ndarray]], *,
                 gallery_size: int, sample_grid_size: int, figure_dpi: int,
                 seed: int) -> dict[str, Figure]:
    """Every figure of the plot stage, by the path (without ``.png``) it is saved under:
    ``misclassified/<source>`` for each source of ``tests``, and ``sample_predictions``
    for the first (the dataset).

    ``tests``: {source: (predictions, images, labels)}, the dataset first; ``images``
    (N, 28, 28) in [0, 1] and ``labels`` (N,) are the source's test arrays that
    ``predictions["index"]`` points into. ValueError, naming the source, for arrays that do
    not match or predictions of other digits; ValueError for no source or a source name
    that cannot be a file name.
    """
    if not tests:
        raise ValueError("no test sources to draw")
    figures = {}
    for source, (predictions, images, labels) in tests.items():
        if not SOURCE_NAME.fullmatch(source):
            raise ValueError(f"source {source!r}: not a name for a file (letters, digits, "
                             "'_', '-' and '.')")
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{source}: test images {images.shape} and labels "
                             f"{labels.shape} do not match")
        try:
            check_predictions_match(predictions, labels)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        figures[f"{MISCLASSIFIED}/{source}"] = misclassified_figure(
            images, predictions, gallery_size, figure_dpi, source)
    predictions, images, _labels = next(iter(tests.values()))
    figures[SAMPLE_PREDICTIONS] = sample_predictions_figure(images, predictions,
                                                            sample_grid_size, seed, figure_dpi)
    return figures


def save_figures(figures: Mapping[str, Figure], directory: str | Path) -> list[Path]:
    """Write each figure as ``directory/<name>.png`` (``name`` may hold a folder),
    atomically; delete other PNGs there and in its subfolders, and folders left empty.

    Returns the written paths. Stale PNGs (from a figure this code no longer makes, or of a
    source that is gone) would otherwise linger in git and in `dvc plots show`.
    """
    directory = Path(directory)
    written = []
    for name, figure in figures.items():
        target = directory / f"{name}.png"
        with atomic_path(target) as temporary:
            # The temporary name ends in .tmp: tell matplotlib the format.
            figure.savefig(temporary, format="png", dpi=figure.dpi, metadata=PNG_METADATA)
        written.append(target)
    for stale in set(directory.rglob("*.png")) - set(written):
        stale.unlink()
    for folder in sorted(directory.rglob("*"), reverse=True):  # the deepest first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return written
