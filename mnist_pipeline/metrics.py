"""Classification metrics from labels and probabilities: numpy and pandas, no TensorFlow.

:func:`classification_metrics` gives the headline numbers that ``metrics/evaluate.json``
holds per test source (a handful of columns in ``dvc metrics show`` and ``dvc exp show``);
:func:`per_class_metrics` gives the per-digit table that ``plots/per_class/<source>.csv``
holds, which ``dvc plots show/diff`` draws as bar charts (errors per digit: at 99% accuracy,
counts show differences that precision, recall and F1 bars on a 0..1 axis hide);
:func:`expected_calibration_error` and :func:`reliability_table` say whether the
probabilities mean what they say (``ece`` in metrics/evaluate.json,
plots/calibration/<source>.csv).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mnist_pipeline.prepared import NUM_CLASSES, check_labels

# Probabilities are clipped like Keras's cross-entropy does, so a confident mistake costs
# -log(1e-7) ~ 16 rather than infinity.
EPSILON = 1e-7
DECIMALS = 6
# Equal-width confidence bins of the calibration error and reliability diagram (15, as Guo
# et al. 2017 and most papers since: their numbers compare with ours).
CALIBRATION_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Counts (num_classes, num_classes) int64: row = actual class, column = predicted class."""
    y_true, y_pred = _labels(y_true, "y_true", num_classes), _labels(y_pred, "y_pred", num_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels, y_pred {y_pred.size}")
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def cross_entropy(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-probability of the true class (natural log)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = _labels(y_true, "y_true", probabilities.shape[-1] if probabilities.ndim == 2 else 0)
    if probabilities.ndim != 2 or len(probabilities) != len(y_true):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not match "
                         f"{y_true.size} labels")
    if not len(y_true):
        return 0.0
    chosen = np.clip(probabilities[np.arange(len(y_true)), y_true], EPSILON, 1.0)
    return float(-np.log(chosen).mean())


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           num_classes: int = NUM_CLASSES) -> dict:
    """The numbers a person compares first, JSON-ready: ``{"accuracy": float, "errors": int}``
    (metrics/evaluate.json adds the calibration error, :func:`expected_calibration_error`)."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    return {"accuracy": _round(correct / total if total else 0.0), "errors": total - correct}


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES
                      ) -> pd.DataFrame:
    """One row per class: digit, precision, recall, f1, support (number of samples), errors
    (samples of the class predicted as another: support minus the hits) and false_positives
    (samples of other classes predicted as this one).

    Precision, recall or F1 of a class is 0 where it is undefined (no predictions of, or no
    samples of, that class), as scikit-learn's ``zero_division=0``.
    """
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    scores = _per_class_scores(matrix)
    table = pd.DataFrame({"digit": np.arange(num_classes)})
    for name in ("precision", "recall", "f1"):
        table[name] = np.round(scores[name], DECIMALS)
    table["support"] = scores["support"]
    hits = np.diag(matrix)
    table["errors"] = scores["support"] - hits
    table["false_positives"] = matrix.sum(axis=0) - hits
    return table


def reliability_table(y_true: np.ndarray, probabilities: np.ndarray,
                      bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """The reliability diagram's data: the confidence (top probability) of each sample in
    ``bins`` equal-width bins ``(lo, hi]`` over [0, 1]; one row per non-empty bin, in order:
    bin (its upper edge), confidence (mean top probability in it), accuracy (share of its
    samples predicted right), count. A calibrated model has accuracy = confidence per bin.
    """
    confidence, correct, index = _confidence_bins(y_true, probabilities, bins)
    counts = np.bincount(index, minlength=bins)
    filled = np.flatnonzero(counts)
    return pd.DataFrame({
        "bin": np.round((filled + 1) / bins, DECIMALS),
        "confidence": np.round(np.bincount(index, confidence, bins)[filled] / counts[filled],
                               DECIMALS),
        "accuracy": np.round(np.bincount(index, correct, bins)[filled] / counts[filled],
                             DECIMALS),
        "count": counts[filled].astype(np.int64),
    })


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray,
                               bins: int = CALIBRATION_BINS) -> float:
    """ECE: sum over the bins of :func:`reliability_table` of (share of the samples in the
    bin) x |accuracy - confidence| (Naeini et al. 2015; Guo et al. 2017). 0 is calibrated;
    a model that says 0.90 and is right 99.8% of the time scores about 0.1."""
    confidence, correct, index = _confidence_bins(y_true, probabilities, bins)
    if not len(index):
        return 0.0
    gaps = np.bincount(index, correct - confidence, bins)  # per bin: sum(right - confidence)
    return _round(np.abs(gaps).sum() / len(index))


def _confidence_bins(y_true: np.ndarray, probabilities: np.ndarray, bins: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample: the top probability, 1.0 if its class is y_true else 0.0, its bin index."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"expected probabilities of shape (N, classes), got "
                         f"{probabilities.shape}")
    y_true = _labels(y_true, "y_true", probabilities.shape[1])
    if len(y_true) != len(probabilities):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not match "
                         f"{y_true.size} labels")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(np.float64)
    # (lo, hi]: a confidence of exactly 1 falls in the last bin, one of 1/bins in the first
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    return confidence, correct, index


def _per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    true_positives = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)  # column sums: how often each class was predicted
    actual = matrix.sum(axis=1)  # row sums: how many samples of each class
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def _labels(values: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    values = np.asarray(values)
    check_labels(values, name, num_classes)
    return values.astype(np.int64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result


def _round(value: float) -> float:
    return round(float(value), DECIMALS)
