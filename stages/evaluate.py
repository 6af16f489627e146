"""Evaluate stage: score the saved model on the test digits, used exactly as predict uses it.

Reads   params.yaml (evaluate), models/model.keras, data/prepared/test_{images,labels}.npy
Writes  metrics/evaluate.json: accuracy, loss (cross-entropy), macro_f1, errors, ece
        (expected calibration error, 15 bins)
        plots/calibration.csv: bin,confidence,accuracy,count (the reliability diagram)
        plots/robustness.csv: level, then the accuracy under each distortion (the first
        robustness.DIGITS test digits; see mnist_pipeline/robustness.py)
        plots/per_class.csv: digit,precision,recall,f1,support (one row per digit)
        plots/predictions.csv: index,actual,predicted,confidence (one row per test digit)
"""

import sys
import time

import numpy as np
import pandas as pd

from mnist_pipeline import inference, paths, prepared, robustness
from mnist_pipeline.fileio import write_csv, write_json
from mnist_pipeline.metrics import (
    classification_metrics,
    expected_calibration_error,
    per_class_metrics,
    reliability_table,
)
from mnist_pipeline.model import to_pixels
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        params = load_params()
        images, labels = prepared.load("test")
        classifier = inference.load(paths.MODEL_FILE)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"evaluate: {error}")

    # The saved model takes raw pixels, as `mnist-pipeline predict` feeds it.
    pixels = to_pixels(images)
    probabilities = classifier.probabilities(pixels, params.evaluate.batch_size)
    predicted = probabilities.argmax(axis=1)
    scores = classification_metrics(labels, predicted, probabilities)
    scores["ece"] = expected_calibration_error(labels, probabilities)
    started = time.perf_counter()
    sturdiness = robustness.robustness_table(
        lambda batch: classifier.probabilities(batch, params.evaluate.batch_size),
        pixels[:robustness.DIGITS], labels[:robustness.DIGITS])
    robustness_seconds = time.perf_counter() - started
    predictions = pd.DataFrame({
        "index": np.arange(len(labels)),
        "actual": labels,
        "predicted": predicted,
        "confidence": probabilities.max(axis=1).round(6),
    })

    write_json(paths.EVALUATE_METRICS, scores)
    write_csv(paths.PER_CLASS_FILE, per_class_metrics(labels, predicted))
    write_csv(paths.PREDICTIONS_FILE, predictions)
    write_csv(paths.CALIBRATION_FILE, reliability_table(labels, probabilities))
    write_csv(paths.ROBUSTNESS_FILE, sturdiness)
    print(f"evaluate: accuracy {scores['accuracy']:.4f}, loss {scores['loss']:.4f}, "
          f"macro F1 {scores['macro_f1']:.4f}, {scores['errors']} errors "
          f"of {len(labels)}, ECE {scores['ece']:.4f}; robustness curve in "
          f"{robustness_seconds:.1f} s")


if __name__ == "__main__":
    main()
