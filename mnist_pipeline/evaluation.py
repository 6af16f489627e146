"""Scoring one test source: its headline numbers and its plot tables (numpy and pandas).

The evaluate stage scores each data source on its own test split (the dataset's, and the pen
digits' test writers), so that ``dvc metrics diff`` shows a branch's effect on each:
metrics/evaluate.json holds per source only what people compare (accuracy, errors, ece), and
the per-digit, confusion and reliability tables go to plots/<kind>/<source>.csv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mnist_pipeline import paths
from mnist_pipeline.metrics import (
    classification_metrics,
    expected_calibration_error,
    per_class_metrics,
    reliability_table,
)


@dataclass(frozen=True)
class SourceResult:
    """What the evaluate stage writes for one source."""

    scores: dict  # {"accuracy": float, "errors": int, "ece": float}
    per_class: pd.DataFrame
    predictions: pd.DataFrame
    reliability: pd.DataFrame


def score(labels: np.ndarray, probabilities: np.ndarray) -> SourceResult:
    """The results for test ``labels`` (N,) given the model's ``probabilities`` (N, 10)."""
    predicted = probabilities.argmax(axis=1)
    scores = {**classification_metrics(labels, predicted),
              "ece": expected_calibration_error(labels, probabilities)}
    predictions = pd.DataFrame({
        "index": np.arange(len(labels)),
        "actual": labels,
        "predicted": predicted,
        "confidence": probabilities.max(axis=1).round(6),
    })
    return SourceResult(scores, per_class_metrics(labels, predicted), predictions,
                        reliability_table(labels, probabilities))


def remove_stale(sources: set[str]) -> None:
    """Delete the per-source plot files of sources no longer scored (a source switched off:
    DVC would otherwise keep drawing its old chart)."""
    for folder in (paths.PER_CLASS_DIR, paths.PREDICTIONS_DIR, paths.CALIBRATION_DIR):
        for stale in folder.glob("*.csv") if folder.is_dir() else ():
            if stale.stem not in sources:
                stale.unlink()
