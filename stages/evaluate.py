"""Evaluate stage: score the saved model on each source's test digits, as predict uses it.

Reads   params.yaml (evaluate), models/model.keras, data/prepared/sources.json ({source: test
        split}) and those splits' data/prepared/<split>_{images,labels}.npy, and the held-out
        latest corrections of each writer, data/corrections/test_*.npy, where there are any
Writes  metrics/evaluate.json: per source (the dataset's name; "drawn" for the pen digits'
        test writers; "extra" for the corrections) accuracy, errors and ece (expected
        calibration error, 15 bins)
        plots/predictions/<source>.csv: index,actual,predicted,confidence (one row per digit)
        plots/per_class/<source>.csv: digit,precision,recall,f1,support,errors,false_positives
        plots/calibration/<source>.csv: bin,confidence,accuracy,count (reliability diagram)
        plots/robustness.csv: level, then the accuracy under each distortion (the first
        robustness.DIGITS test digits of the dataset; see mnist_pipeline/robustness.py)
"""

import sys
import time

from mnist_pipeline import evaluation, fileio, inference, paths, prepared, robustness
from mnist_pipeline.model import to_pixels
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        params = load_params()
        sources = prepared.read_sources()
        test_sets = {source: prepared.load(split) for source, split in sources.items()}
        main_source = next(source for source, split in sources.items() if split == "test")
        if paths.prepared_labels("test", paths.CORRECTIONS_DIR).exists():
            test_sets[prepared.EXTRA_SOURCE] = prepared.load("test", paths.CORRECTIONS_DIR)
        classifier = inference.load(paths.MODEL_FILE)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"evaluate: {error}")

    def probabilities(pixels):
        return classifier.probabilities(pixels, params.evaluate.batch_size)

    # The saved model takes raw pixels, as `mnist-pipeline predict` feeds it. The robustness
    # curve is drawn on the dataset's own test digits.
    main_images, main_labels = test_sets[main_source]
    try:
        results = {source: evaluation.score(labels, probabilities(to_pixels(images)))
                   for source, (images, labels) in test_sets.items()}
        started = time.perf_counter()
        sturdiness = robustness.robustness_table(
            probabilities, to_pixels(main_images[:robustness.DIGITS]),
            main_labels[:robustness.DIGITS])
    except inference.ModelError as error:  # NaN or infinite answers: nothing to score
        sys.exit(f"evaluate: {error}")
    robustness_seconds = time.perf_counter() - started

    evaluation.remove_stale(set(results))
    for source, result in results.items():
        fileio.write_csv(paths.per_class_file(source), result.per_class)
        fileio.write_csv(paths.predictions_file(source), result.predictions)
        fileio.write_csv(paths.calibration_file(source), result.reliability)
    fileio.write_csv(paths.ROBUSTNESS_FILE, sturdiness)
    fileio.write_json(paths.EVALUATE_METRICS,
                      {source: result.scores for source, result in results.items()})
    for source, result in results.items():
        scores = result.scores
        print(f"evaluate: {source}: accuracy {scores['accuracy']:.4f}, {scores['errors']} "
              f"errors of {len(result.predictions)}, ECE {scores['ece']:.4f}")
    print(f"evaluate: robustness curve in {robustness_seconds:.1f} s")


if __name__ == "__main__":
    main()
