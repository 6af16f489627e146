"""Pictures of a trained model: training curves, confusion matrix, errors, samples.

Readers turn the train and evaluate stages' files into plain tables; pure helpers compute
what to draw (confusion matrix, recall, the most confidently wrong digits, a seeded sample);
figure builders return matplotlib :class:`~matplotlib.figure.Figure` objects; and
:func:`save_figures` writes them as PNGs, atomically, removing PNGs it no longer makes.

Figures are built with the object-oriented API (no pyplot): nothing touches a global figure
registry or an interactive backend, PNGs are rendered by Agg, and no figure needs closing.
Nothing here imports TensorFlow: plotting reads only files, so it starts in a second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mnist_pipeline.fileio import atomic_path
from mnist_pipeline.metrics import confusion_matrix
from mnist_pipeline.prepared import NUM_CLASSES

HISTORY_METRICS = ("accuracy", "loss")
# dvclive's folder names under plots/metrics/ -> the column prefix used here.
HISTORY_SPLITS = {"train": "train", "eval": "val"}
PREDICTION_COLUMNS = ("index", "actual", "predicted", "confidence")

# Fixed sizes in inches; the image galleries grow with their cell count (see grid_shape).
TRAINING_CURVES_SIZE = (12.0, 4.5)
CONFUSION_MATRIX_SIZE = (9.0, 7.5)
PER_CLASS_RECALL_SIZE = (9.0, 4.5)
NO_ERRORS_SIZE = (6.0, 2.5)
GALLERY_CELL_SIZE = (1.6, 1.8)
GALLERY_TITLE_HEIGHT = 0.7

WRONG_COLOR = "#c62828"
RIGHT_COLOR = "#1b1b1b"
TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"
# No matplotlib version in the PNG metadata: a library upgrade alone must not change the
# git-tracked images.
PNG_METADATA = {"Software": None}


# ---------------------------------------------------------------------------------------
# Reading the stages' outputs


def read_training_history(directory: str | Path) -> pd.DataFrame:
    """Per-epoch metrics from dvclive's TSVs under ``directory`` (``paths.TRAINING_PLOTS_DIR``).

    Reads ``{train,eval}/{accuracy,loss}.tsv`` (columns ``step`` and the metric; dvclive
    adds ``timestamp``, which is ignored). Returns a frame indexed by ``epoch`` (step + 1)
    with columns ``train_accuracy``, ``train_loss`` and, when validation was logged,
    ``val_accuracy`` and ``val_loss``. The train files are required.
    """
    directory = Path(directory)
    columns: dict[str, pd.Series] = {}
    for folder, prefix in HISTORY_SPLITS.items():
        for metric in HISTORY_METRICS:
            path = directory / folder / f"{metric}.tsv"
            if not path.is_file():
                if folder == "train":
                    raise FileNotFoundError(f"{path}: missing; run `dvc repro train` first")
                continue
            table = pd.read_csv(path, sep="\t")
            missing = {"step", metric} - set(table.columns)
            if missing:
                raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
            series = table.set_index("step")[metric].astype(float)
            columns[f"{prefix}_{metric}"] = series[~series.index.duplicated(keep="last")]
    history = pd.DataFrame(columns).sort_index()
    if history.empty:
        raise ValueError(f"{directory}: the training log has no epochs")
    history.index = (history.index + 1).rename("epoch")
    return history


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

    Catches predictions.csv written for another split or another dataset than the arrays.
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
            "predictions.csv is stale: rerun `dvc repro evaluate`"
        )


# ---------------------------------------------------------------------------------------
# What to draw (pure)


def row_percentages(matrix: np.ndarray) -> np.ndarray:
    """Each row as percentages of its total (0 for a class without samples)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(100.0 * matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Share of each true class predicted correctly, in [0, 1]; NaN for a class without samples."""
    totals = matrix.sum(axis=1)
    correct = np.diag(matrix).astype(float)
    return np.divide(correct, totals, out=np.full(len(totals), np.nan), where=totals > 0)


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


def training_curves_figure(history: pd.DataFrame, dpi: int) -> Figure:
    """Accuracy and loss per epoch, train vs validation, in two panels side by side."""
    figure = Figure(figsize=TRAINING_CURVES_SIZE, dpi=dpi, layout="constrained")
    axes = figure.subplots(1, 2)
    epochs = history.index.to_numpy()
    for ax, metric in zip(axes, HISTORY_METRICS, strict=True):
        for prefix, label, color, style in (("train", "train", TRAIN_COLOR, "-"),
                                            ("val", "validation", VAL_COLOR, "--")):
            column = f"{prefix}_{metric}"
            if column in history:
                values = history[column].to_numpy()
                ax.plot(epochs, values, style, color=color, marker="o", markersize=3,
                        linewidth=2, label=f"{label} (last {values[-1]:.4g})")
        validation = f"val_{metric}"
        if validation in history:
            best = history[validation].idxmax() if metric == "accuracy" else \
                history[validation].idxmin()
            ax.axvline(best, color="grey", linewidth=1, linestyle=":",
                       label=f"best validation: epoch {best}")
        ax.set_title(metric.capitalize())
        ax.set_xlabel("Epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if metric == "accuracy" else "upper right")
        ax.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"Training curves ({len(history)} epochs)", fontsize=14)
    return figure


def confusion_matrix_figure(matrix: np.ndarray, dpi: int) -> Figure:
    """Heatmap coloured by row percentage, each cell labelled with its count and percentage."""
    percentages = row_percentages(matrix)
    figure = Figure(figsize=CONFUSION_MATRIX_SIZE, dpi=dpi, layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(percentages, cmap="Blues", vmin=0, vmax=100)
    classes = range(matrix.shape[0])
    for row in classes:
        for column in classes:
            count = matrix[row, column]
            if count == 0:
                continue
            share = percentages[row, column]
            ax.text(column, row, f"{count}\n{share:.1f}%", ha="center", va="center",
                    fontsize=7, color="white" if share > 50 else "black")
    ax.set_xticks(classes)
    ax.set_yticks(classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    ax.set_title(f"Confusion matrix: {total} test digits, accuracy {100 * accuracy:.2f}%\n"
                 "cells: count and % of the true class (row)")
    figure.colorbar(image, ax=ax, label="% of the true class")
    return figure


def per_class_recall_figure(matrix: np.ndarray, dpi: int) -> Figure:
    """Bars of recall per true class, the weakest class highlighted, overall accuracy dashed."""
    recall = 100 * per_class_recall(matrix)
    totals = matrix.sum(axis=1)
    figure = Figure(figsize=PER_CLASS_RECALL_SIZE, dpi=dpi, layout="constrained")
    ax = figure.subplots()
    classes = np.arange(len(recall))
    known = ~np.isnan(recall)
    colors = [TRAIN_COLOR] * len(recall)
    if known.any():
        colors[int(np.nanargmin(recall))] = WRONG_COLOR
    heights = np.where(known, recall, 0)
    ax.bar(classes, heights, color=colors)
    # Recall is usually 95-100%: start the axis just below the weakest class so differences
    # show, and say so on the axis.
    floor = 0.0
    if known.any():
        floor = max(0.0, 5 * math.floor((np.nanmin(recall) - 1) / 5))
    ax.set_ylim(floor, 100 + 0.15 * (100 - floor))  # headroom for the bar labels
    ax.set_yticks([tick for tick in ax.get_yticks() if floor <= tick <= 100])
    for position, value, total in zip(classes, recall, totals, strict=True):
        label = "no samples" if np.isnan(value) else f"{value:.1f}%\nn={total}"
        ax.text(position, max(heights[position], floor), label, ha="center", va="bottom",
                fontsize=8)
    accuracy = 100 * np.trace(matrix) / matrix.sum()
    ax.axhline(accuracy, color="grey", linestyle="--", linewidth=1,
               label=f"overall accuracy {accuracy:.2f}%")
    ax.set_xticks(classes)
    ax.set_xlabel("True class")
    ax.set_ylabel("Recall (%)" + (f", axis from {floor:g}%" if floor else ""))
    ax.set_title("Recall per class: share of each class predicted correctly (weakest in red)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return figure


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
                         dpi: int) -> Figure:
    """The ``count`` most confidently wrong digits, each titled "true -> predicted (conf%)"."""
    errors = most_confident_errors(predictions, count)
    total_errors = int((predictions["actual"] != predictions["predicted"]).sum())
    if errors.empty:
        figure = Figure(figsize=NO_ERRORS_SIZE, dpi=dpi)
        figure.text(0.5, 0.5, f"No errors: all {len(predictions)} test digits\n"
                    "were classified correctly", ha="center", va="center", fontsize=14)
        return figure
    titles = [f"{row.actual} -> {row.predicted} ({100 * row.confidence:.0f}%)"
              for row in errors.itertuples()]
    return _digit_gallery(
        images[errors["index"].to_numpy()], titles, [WRONG_COLOR] * len(errors),
        f"Most confidently wrong test digits: {len(errors)} of {total_errors} errors\n"
        "true -> predicted (confidence)", dpi,
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


def make_figures(history: pd.DataFrame, predictions: pd.DataFrame, images: np.ndarray,
                 labels: np.ndarray, *, gallery_size: int, sample_grid_size: int,
                 figure_dpi: int, seed: int) -> dict[str, Figure]:
    """Every figure of the plot stage, by file stem.

    ``images`` (N, 28, 28) in [0, 1] and ``labels`` (N,) are the test arrays that
    ``predictions["index"]`` points into.
    """
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"test images {images.shape} and labels {labels.shape} do not match")
    check_predictions_match(predictions, labels)
    matrix = confusion_matrix(predictions["actual"].to_numpy(), predictions["predicted"].to_numpy())
    return {
        "training_curves": training_curves_figure(history, figure_dpi),
        "confusion_matrix": confusion_matrix_figure(matrix, figure_dpi),
        "per_class_recall": per_class_recall_figure(matrix, figure_dpi),
        "misclassified": misclassified_figure(images, predictions, gallery_size, figure_dpi),
        "sample_predictions": sample_predictions_figure(images, predictions, sample_grid_size,
                                                        seed, figure_dpi),
    }


def save_figures(figures: Mapping[str, Figure], directory: str | Path) -> list[Path]:
    """Write each figure as ``directory/<name>.png``, atomically; delete other PNGs there.

    Returns the written paths. Stale PNGs (from a figure this code no longer makes) would
    otherwise linger in git and in `dvc plots show`.
    """
    directory = Path(directory)
    written = []
    for name, figure in figures.items():
        target = directory / f"{name}.png"
        with atomic_path(target) as temporary:
            # The temporary name ends in .tmp: tell matplotlib the format.
            figure.savefig(temporary, format="png", dpi=figure.dpi, metadata=PNG_METADATA)
        written.append(target)
    for stale in set(directory.glob("*.png")) - set(written):
        stale.unlink()
    return written
