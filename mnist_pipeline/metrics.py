"""Classification metrics from labels and probabilities: plain numpy, no TensorFlow.

The result of :func:`classification_metrics` is what ``metrics/evaluate.json`` holds; its
flat top-level numbers and ``per_class.<digit>.<metric>`` keys read well in
``dvc metrics diff``.
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped like Keras's cross-entropy does, so a confident mistake costs
# -log(1e-7) ~ 16 rather than infinity.
EPSILON = 1e-7
DECIMALS = 6


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10) -> np.ndarray:
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


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probabilities: np.ndarray | None = None,
    num_classes: int = 10,
) -> dict:
    """Accuracy, error count, macro F1 and per-class precision/recall/F1 (+ loss if given probs).

    Precision, recall or F1 of a class is 0 where it is undefined (no predictions of, or no
    samples of, that class), as scikit-learn's ``zero_division=0``. Returns JSON-ready data::

        {"num_samples": int, "errors": int, "accuracy": float, "macro_f1": float,
         "loss": float (only with probabilities),
         "per_class": {"0": {"precision", "recall", "f1", "support"}, ...}}
    """
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    true_positives = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)  # column sums: how often each class was predicted
    actual = matrix.sum(axis=1)  # row sums: how many samples of each class
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = int(matrix.sum())
    correct = int(true_positives.sum())
    result: dict = {
        "num_samples": total,
        "errors": total - correct,
        "accuracy": _round(correct / total if total else 0.0),
        "macro_f1": _round(f1.mean()),
        "per_class": {
            str(label): {
                "precision": _round(precision[label]),
                "recall": _round(recall[label]),
                "f1": _round(f1[label]),
                "support": int(actual[label]),
            }
            for label in range(num_classes)
        },
    }
    if probabilities is not None:
        result["loss"] = _round(cross_entropy(y_true, probabilities))
    return result


def _labels(values: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"{name}: expected an integer vector of labels, got "
                         f"{values.dtype} {values.shape}")
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{name}: labels outside 0..{num_classes - 1}")
    return values


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=result, where=denominator > 0)
    return result


def _round(value: float) -> float:
    return round(float(value), DECIMALS)
