"""Calibration before and after the temperature, judged on real MNIST digits held out of training.

    .venv/bin/python benchmarks/calibration.py             # params.yaml (the default recipe)
    .venv/bin/python benchmarks/calibration.py --sample    # `make sample` (recipes/sample.yaml)
    .venv/bin/python benchmarks/calibration.py --smoke     # seconds: checks it runs

Default recipe: the 60,000 MNIST training digits of ``--data`` (as benchmarks/real_mnist.py:
/work/shared/mnist-train or $MNIST_TRAIN_DIR); a stratified 6,000 (seed 0) are held out as
the judge, ``preprocess.val_fraction`` of the others is the validation split that the
temperature is fitted on, the rest trains. ``--sample``: the pipeline's own splits of the
5,000 bundled digits (4,250 / 250 / 500), judged on their 500 test digits and on 10,000 of the
MNIST training digits that are not among the 5,000 (pixel-exact), none of them trained on.

The network is trained as the train stage trains it, the temperature fitted as it fits it
(``stages.train.fit_calibration``), and both models (temperature 1, and fitted) scored as the
evaluate stage scores them: accuracy, mean confidence, ECE (15 bins), NLL.
Writes benchmarks/results/calibration-<recipe>.json. ``--smoke``: the default protocol on
768 of the bundled digits (128 held out) with a tiny network.
"""

from __future__ import annotations

import time
from pathlib import Path

import common
import numpy as np
import real_mnist

HELD_OUT = 6000
SAMPLE_JUDGE = 10_000


def held_out_digits(images, labels, count, seed=0):
    """A stratified ``count`` of (images, labels) and the rest, by index."""
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == digit))[
        :round(count * np.mean(labels == digit))] for digit in range(10)])
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return chosen, rest


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--sample", action="store_true", help="the `make sample` recipe")
    parser.add_argument("--data", type=Path, default=real_mnist.DEFAULT_DATA)
    args = parser.parse_args(argv)
    if args.smoke:
        common.start_smoke()
        args.sample = False

    from mnist_pipeline import inference, training
    from mnist_pipeline.metrics import expected_calibration_error
    from mnist_pipeline.model import build_network, export_model, to_pixels
    from mnist_pipeline.preprocess import stratified_split
    from stages.train import fit_calibration

    overrides = (common.recipe_overrides() if args.sample else []) + args.overrides
    overrides += common.SMOKE_OVERRIDES if args.smoke else []
    params = common.base_params(overrides)
    if args.smoke:
        images, labels = (array[:768] for array in real_mnist.load_sample_digits())
    else:
        images, labels = real_mnist.load_mnist_train(args.data)  # uint8 (60000, 28, 28)
    if args.sample:
        splits = common.load_splits("mnist-sample", params)
        sample = {image.tobytes() for image in real_mnist.load_sample_digits()[0]}
        outside = np.flatnonzero([image.tobytes() not in sample for image in images])
        chosen = np.random.default_rng(0).choice(outside, SAMPLE_JUDGE, replace=False)
        judges = {"test split": (to_pixels(splits["test"][0]), splits["test"][1]),
                  "held-out MNIST": (images[chosen].astype(np.float32), labels[chosen])}
    else:
        judged, rest = held_out_digits(images, labels, 128 if args.smoke else HELD_OUT)
        train, val = stratified_split(labels[rest], params.preprocess.val_fraction, params.seed)
        prepared = (images / 255.0).astype(np.float32)
        splits = {"train": (prepared[rest][train], labels[rest][train]),
                  "val": (prepared[rest][val], labels[rest][val])}
        judges = {"held-out MNIST": (images[judged].astype(np.float32), labels[judged])}
    print({name: len(split[1]) for name, split in splits.items()},
          {name: len(judge[1]) for name, judge in judges.items()})

    training.set_determinism(params.seed)
    network = build_network(params.model)
    started = time.perf_counter()
    training.train(network, splits["train"], splits["val"], params.train, params.seed)
    seconds = time.perf_counter() - started
    fitted = fit_calibration(network, params.model.test_time_shifts, splits["val"])
    print(f"trained in {seconds:.0f} s; temperature {fitted.temperature} (validation NLL "
          f"{fitted.nll_before:.4f} -> {fitted.nll_after:.4f})")

    results, rows = {}, []
    for temperature in (1.0, fitted.temperature):
        classifier = inference.from_keras_model(
            export_model(network, params.model.test_time_shifts, temperature))
        for name, (pixels, truth) in judges.items():
            probabilities = classifier.probabilities(pixels, params.evaluate.batch_size)
            chosen = np.clip(probabilities[np.arange(len(truth)), truth], 1e-7, 1)
            entry = {"digits": len(truth),
                     "accuracy": round(float((probabilities.argmax(1) == truth).mean()), 4),
                     "mean_confidence": round(float(probabilities.max(1).mean()), 4),
                     "ece": expected_calibration_error(truth, probabilities),
                     "nll": round(float(-np.log(chosen).mean()), 4)}
            results[f"T={temperature} {name}"] = entry
            rows.append([temperature, name, entry["digits"], entry["accuracy"],
                         entry["mean_confidence"], entry["ece"], entry["nll"]])
    common.print_table(["T", "judged on", "digits", "accuracy", "mean conf", "ECE", "NLL"], rows)
    common.write_results(f"calibration-{'sample' if args.sample else 'default'}", {
        "overrides": overrides, "train_seconds": round(seconds, 1),
        "temperature": fitted.temperature, "val_nll_before": fitted.nll_before,
        "val_nll_after": fitted.nll_after, "results": results})


if __name__ == "__main__":
    main()
