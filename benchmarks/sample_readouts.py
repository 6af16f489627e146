"""Ideas for the sample recipe that need no new param to measure: several read-outs of one run.

    .venv/bin/python benchmarks/sample_readouts.py --label sample            # recipes/sample.yaml
    .venv/bin/python benchmarks/sample_readouts.py --label cycles2 \
        -S train.lr_schedule=cosine_restarts -S train.lr_cycles=2
    .venv/bin/python benchmarks/sample_readouts.py --label shear --folds 0,1 --shear 0.2
    .venv/bin/python benchmarks/sample_readouts.py --table

Same folds, seeds and training code as ``sample_recipes.py --seed-per-fold`` (fold i of the 5
stratified folds, seed i+1; the recipe is params.yaml + recipes/sample.yaml + ``-S``), so the
``plain`` read-out of a run equals that script's accuracy for the same recipe. Each run
trains once and scores its held-out fold several ways, so the read-outs are compared on the
same weights and digits, at no extra training cost:

* ``plain``: the final weights, as the pipeline saves them;
* ``tta5`` / ``tta9``: test-time augmentation, the mean probabilities over the digit and its
  copies shifted by one pixel (4 directions; 8 with the diagonals): the model the pipeline
  saves with ``model.test_time_shifts`` 4 / 8;
* ``swa``: the mean of the weights after each of the last ``--swa-epochs`` epochs (SWA);
* ``snapshots`` (with ``train.lr_schedule=cosine_restarts``): the mean probabilities of the
  ``train.lr_cycles`` networks at the end of each cosine cycle (a snapshot ensemble).

``--shear`` changes training inside this process only (a Keras ``RandomShear`` after the
recipe's augmentation): it is not a pipeline param because it lost (benchmarks/README.md).
Runs accumulate in results/sample_readouts.json.
"""

from __future__ import annotations

import json
import math
import statistics

import common
import numpy as np
import sample_recipes

RESULTS_NAME = "sample_readouts"


def add_shear(shear: float) -> None:
    """A RandomShear after the recipe's augmentation, in this process's training module."""
    import keras

    from mnist_pipeline import training

    if shear:
        recipe_augmentation = training.build_augmentation

        def with_shear(config, seed):
            from keras import layers
            transforms = [layer for layer in recipe_augmentation(config, seed).layers
                          if not isinstance(layer, layers.Reshape)]
            return keras.Sequential([
                keras.Input(shape=(28, 28)), layers.Reshape((28, 28, 1)), *transforms,
                layers.RandomShear(shear, shear, seed=seed + 3, fill_mode="constant",
                                   fill_value=0.0),
                layers.Reshape((28, 28))])
        training.build_augmentation = with_shear


def weight_keeper(epochs: int, swa_epochs: int, lr_cycles: int):
    """A callback keeping the weights of the last ``swa_epochs`` epochs and of each cycle end."""
    import keras

    class WeightKeeper(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            # the first epoch end at or after each cycle's last step (cycles are total steps /
            # lr_cycles long in training.learning_rate, so not always whole epochs)
            self.cycle_ends = {math.ceil(epochs * (cycle + 1) / lr_cycles)
                               for cycle in range(lr_cycles)}
            self.last_epochs, self.snapshots = [], []

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 > epochs - swa_epochs:
                self.last_epochs.append(self.model.get_weights())
            if epoch + 1 in self.cycle_ends:
                self.snapshots.append(self.model.get_weights())

    return WeightKeeper()


def readouts(network, keeper, images, labels, lr_cycles: int) -> dict[str, float]:
    """Accuracy on the held-out digits, each read-out scored as the evaluate stage scores the
    saved model: ``export_model`` on pixels 0..255."""
    from mnist_pipeline.inference import from_keras_model
    from mnist_pipeline.model import export_model, to_pixels

    pixels = to_pixels(images)

    def accuracy(weight_sets, test_time_shifts=0):
        total = 0.0
        for weights in weight_sets:
            network.set_weights(weights)
            total = total + from_keras_model(export_model(network, test_time_shifts)
                                             ).probabilities(pixels, batch_size=1000)
        return float((total.argmax(axis=1) == labels).mean())

    final = network.get_weights()
    averaged = [np.mean(layer, axis=0) for layer in zip(*keeper.last_epochs, strict=True)]
    scores = {"plain": accuracy([final]),
              "tta5": accuracy([final], test_time_shifts=4),
              "tta9": accuracy([final], test_time_shifts=8),
              "swa": accuracy([averaged])}
    if lr_cycles > 1:
        scores["snapshots"] = accuracy(keeper.snapshots)
    network.set_weights(final)
    return scores


def print_table(runs: list[dict], baseline: str) -> None:
    """Per label and read-out: mean accuracy, and the mean paired difference from the
    baseline label's plain read-out on the same (fold, seed) runs."""
    def pair(run):
        return run["split_seed"], run["fold"], run["seed"]

    base = {pair(r): r["readouts"]["plain"] for r in runs if r["label"] == baseline}
    rows = []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        for name in dict.fromkeys(key for r in mine for key in r["readouts"]):
            scored = [r for r in mine if name in r["readouts"]]  # imported runs: plain only
            values = [r["readouts"][name] for r in scored]
            diffs = [r["readouts"][name] - base[pair(r)] for r in scored if pair(r) in base]
            rows.append([label, name, len(values), statistics.mean(values),
                         f"{statistics.mean(diffs):+.4f} ({len(diffs)})" if diffs else None,
                         f"{statistics.stdev(diffs):.4f}" if len(diffs) > 1 else None,
                         statistics.mean(r["train_cpu_s"] for r in scored)])
    common.print_table(["recipe", "read-out", "runs", "mean acc",
                        f"vs {baseline} plain, same runs", "std of diff", "train CPU s"], rows)


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--label", help="name of the recipe in the results (needed to train)")
    parser.add_argument("--folds", default="0,1,2,3,4", help="held-out folds (of 5)")
    parser.add_argument("--seed", type=int,
                        help="one training seed for every fold (default: fold i gets i+1)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--swa-epochs", type=int, default=5)
    parser.add_argument("--shear", type=float, default=0.0)
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--baseline", default="sample")
    args = parser.parse_args()

    results = common.load_runs(RESULTS_NAME)
    if args.table:
        print_table(results["runs"], args.baseline)
        return
    if not args.label:
        parser.error("--label NAME is needed to train")

    from mnist_pipeline import training
    from mnist_pipeline.model import build_network

    add_shear(args.shear)
    overrides = common.sample_overrides() + args.overrides
    params = common.base_params(overrides)
    images, labels = sample_recipes.load_digits()
    folds = sample_recipes.stratified_folds(labels, 5, args.split_seed)
    for fold in (int(item) for item in args.folds.split(",")):
        # as sample_recipes.py --seed-per-fold (fold i, seed i+1), or its --seeds N
        seed = args.seed if args.seed is not None else fold + 1
        splits = sample_recipes.fold_splits(images, labels, folds, fold)
        run_params = common.apply_overrides(params, [f"seed={seed}"])
        training.set_determinism(seed)
        network = build_network(run_params.model)
        timer = common.epoch_timer()(None)
        cycles = (run_params.train.lr_cycles
                  if run_params.train.lr_schedule == "cosine_restarts" else 1)
        keeper = weight_keeper(run_params.train.epochs, args.swa_epochs, cycles)
        training.train(network, splits["train"], splits["val"], run_params.train, seed,
                       callbacks=[timer, keeper], verbose=0)
        run = {"label": args.label, "split_seed": args.split_seed, "fold": fold, "seed": seed,
               "overrides": overrides, "shear": args.shear,
               "swa_epochs": args.swa_epochs,
               "readouts": readouts(network, keeper, *splits["test"], cycles),
               "train_wall_s": timer.epochs[-1]["wall_s"],
               "train_cpu_s": timer.epochs[-1]["cpu_s"]}
        print(json.dumps(run), flush=True)
        common.save_run(RESULTS_NAME, results, run, ("label", "split_seed", "fold", "seed"))
    print_table(results["runs"], args.baseline)


if __name__ == "__main__":
    main()
