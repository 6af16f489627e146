"""Wall (and CPU) seconds of training until validation accuracy reaches a target:
our default network and recipe (params.yaml, mnist_pipeline.training.train) against the
Keras "simple MNIST convnet" (https://keras.io/examples/vision/mnist_convnet/), same splits.

    .venv/bin/python benchmarks/time_to_accuracy.py --dataset mnist-sample
    .venv/bin/python benchmarks/time_to_accuracy.py --dataset fashion-mnist --max-minutes 6
    .venv/bin/python benchmarks/time_to_accuracy.py --smoke   # seconds: checks it runs

Each dataset gets its recipe, as `make sample` and `make fashion` run it (recipes/sample.yaml,
recipes/fashion-mnist.yaml), unless --no-recipe (params.yaml as is); -S key=value adds more
(e.g. -S train.epochs=5). The target defaults to the reference's final validation accuracy.
Writes benchmarks/results/time_to_accuracy-<dataset>.json.
"""

from __future__ import annotations

import time

import common


def reference_network():
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ], name="keras_simple_convnet")


def run_ours(params, splits, max_seconds):
    """Train our network; return its epochs, test accuracy, weight count, and the test
    accuracy of the same weights saved with each ``model.test_time_shifts`` setting."""
    from mnist_pipeline import training
    from mnist_pipeline.model import SHIFTS, build_network

    training.set_determinism(params.seed)
    network = build_network(params.model)
    timer = common.epoch_timer()(max_seconds)
    training.train(network, splits["train"], splits["val"], params.train, params.seed,
                   callbacks=[timer], verbose=2)
    by_shifts = {shifts: exported_accuracy(network, shifts, splits["test"],
                                           params.evaluate.batch_size)
                 for shifts in SHIFTS}
    return (timer.epochs, by_shifts[params.model.test_time_shifts], network.count_params(),
            by_shifts)


def exported_accuracy(network, test_time_shifts, test_split, batch_size):
    """Scored as the evaluate stage does: the exported (pixel-input) model on pixels 0..255."""
    from mnist_pipeline.inference import from_keras_model
    from mnist_pipeline.model import export_model, to_pixels

    images, labels = test_split
    probabilities = from_keras_model(export_model(network, test_time_shifts)).probabilities(
        to_pixels(images), batch_size)
    return float((probabilities.argmax(axis=1) == labels).mean())


def run_reference(seed, splits, epochs, max_seconds):
    import keras
    import numpy as np

    from mnist_pipeline import training

    training.set_determinism(seed)
    model = reference_network()
    model.compile(loss="categorical_crossentropy",
                  optimizer=keras.optimizers.Adam(learning_rate=1e-3), metrics=["accuracy"])
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        (images[..., None], keras.utils.to_categorical(labels, 10))
        for images, labels in (splits["train"], splits["val"], splits["test"]))
    timer = common.epoch_timer()(max_seconds)
    model.fit(x_train, y_train, batch_size=128, epochs=epochs, validation_data=(x_val, y_val),
              callbacks=[timer], verbose=2)
    predicted = model.predict(x_test, batch_size=1024, verbose=0).argmax(axis=1)
    accuracy = float((predicted == np.argmax(y_test, axis=1)).mean())
    return timer.epochs, accuracy, model.count_params()


def first_reaching(epochs, target):
    for row in epochs:
        if row.get("val_accuracy", 0.0) >= target:
            return row
    return None


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", choices=common.DATASETS, default="mnist-sample")
    parser.add_argument("--no-recipe", action="store_true",
                        help="do not apply the dataset's recipe (recipes/*.yaml)")
    parser.add_argument("--epochs", type=int, help="our epochs (same as -S train.epochs=N)")
    parser.add_argument("--reference-epochs", type=int, default=15)
    parser.add_argument("--target", type=float,
                        help="val accuracy target (default: the reference's final one)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop each model's training after the epoch that passes this")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--name", help="results file benchmarks/results/NAME.json "
                        "(default: time_to_accuracy-<dataset>)")
    args = parser.parse_args(argv)
    if args.smoke:
        common.start_smoke()
        args.reference_epochs = 1

    overrides = []
    if not args.no_recipe:
        overrides += common.recipe_overrides(common.RECIPES[args.dataset])
    overrides += [f"data.dataset={args.dataset}", *args.overrides]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    if args.smoke:
        overrides += common.SMOKE_OVERRIDES
    params = common.base_params(overrides)
    max_seconds = args.max_minutes * 60 if args.max_minutes else None

    started = time.perf_counter()
    splits = common.load_splits(args.dataset, params)
    if args.smoke:
        splits = common.smoke_subset(splits)
    prepare_s = time.perf_counter() - started
    sizes = {name: len(labels) for name, (_images, labels) in splits.items()}
    print(f"{args.dataset}: {sizes}, prepared in {prepare_s:.1f} s; overrides {overrides}")

    runs = {}
    if not args.skip_reference:
        epochs, accuracy, weights = run_reference(params.seed, splits, args.reference_epochs,
                                                  max_seconds)
        runs["reference"] = {"epochs": epochs, "test_accuracy": accuracy, "weights": weights}
    epochs, accuracy, weights, by_shifts = run_ours(params, splits, max_seconds)
    runs["ours"] = {"epochs": epochs, "test_accuracy": accuracy, "weights": weights,
                    "test_accuracy_by_test_time_shifts": by_shifts}

    target = args.target
    if target is None:
        source = runs.get("reference") or runs["ours"]
        target = source["epochs"][-1]["val_accuracy"]
    best = max(row["val_accuracy"] for row in (runs.get("reference") or runs["ours"])["epochs"])
    rows = []
    for name, run in runs.items():
        hit = first_reaching(run["epochs"], target)
        hit_best = first_reaching(run["epochs"], best)
        last = run["epochs"][-1]
        run["summary"] = {
            "target_val_accuracy": target,
            "epochs_run": last["epoch"],
            "train_wall_s": last["wall_s"],
            "train_cpu_s": last["cpu_s"],
            "final_val_accuracy": last.get("val_accuracy"),
            "test_accuracy": run["test_accuracy"],
            "epoch_to_target": hit and hit["epoch"],
            "wall_s_to_target": hit and hit["wall_s"],
            "cpu_s_to_target": hit and hit["cpu_s"],
            "best_val_accuracy": max(row["val_accuracy"] for row in run["epochs"]),
            "wall_s_to_reference_best": hit_best and hit_best["wall_s"],
            "train_images_per_s_last_epoch": len(splits["train"][1]) / last["train_batches_wall_s"],
        }
        summary = run["summary"]
        rows.append([name, run["weights"], summary["epochs_run"], summary["train_wall_s"],
                     summary["train_cpu_s"], summary["final_val_accuracy"],
                     summary["test_accuracy"], summary["epoch_to_target"],
                     summary["wall_s_to_target"], summary["wall_s_to_reference_best"],
                     summary["train_images_per_s_last_epoch"]])
    ratio = None
    if "reference" in runs:
        ours, ref = runs["ours"]["summary"], runs["reference"]["summary"]
        if ours["wall_s_to_target"] and ref["wall_s_to_target"]:
            ratio = ours["wall_s_to_target"] / ref["wall_s_to_target"]

    print(f"\n{args.dataset}, target val accuracy {target:.4f}")
    common.print_table(["model", "weights", "epochs", "train wall s", "train CPU s",
                        "final val acc", "test acc", "epoch to target", "wall s to target",
                        f"wall s to {best:.4f} (ref. best)", "train img/s (last epoch)"], rows)
    print("ours, test accuracy by model.test_time_shifts: " + ", ".join(
        f"{shifts}: {accuracy:.4f}"
        for shifts, accuracy in runs["ours"]["test_accuracy_by_test_time_shifts"].items()))
    print(f"ratio wall s to target, ours / reference: "
          f"{'not reached' if ratio is None else f'{ratio:.2f}'}")
    common.write_results(args.name or f"time_to_accuracy-{args.dataset}", {
        "dataset": args.dataset, "split_sizes": sizes, "overrides": overrides,
        "params": common.as_dict(params), "reference_epochs": args.reference_epochs,
        "max_minutes": args.max_minutes, "target_val_accuracy": target,
        "ratio_wall_s_to_target_ours_over_reference": ratio, "runs": runs,
    })


if __name__ == "__main__":
    main()
