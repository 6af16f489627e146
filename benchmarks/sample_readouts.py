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
  copies shifted by one pixel (4 directions; 8 with the diagonals);
* ``swa``: the mean of the weights after each of the last ``--swa-epochs`` epochs (SWA);
* ``snapshots`` (with ``train.lr_schedule=cosine_restarts``): the mean probabilities of the
  ``train.lr_cycles`` networks at the end of each cosine cycle (a snapshot ensemble).

``--shear`` changes training inside this process only (a Keras ``RandomShear`` after the
recipe's augmentation): it is not a pipeline param because it lost (benchmarks/README.md).
Runs accumulate in results/sample_readouts.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import common
import numpy as np
import sample_recipes

RESULTS_NAME = "sample_readouts"
SHIFTS_4 = [(1, 0), (-1, 0), (0, 1), (0, -1)]
SHIFTS_8 = SHIFTS_4 + [(1, 1), (1, -1), (-1, 1), (-1, -1)]


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(N, H, W) images moved dy rows down and dx columns right, zeros (background) moved in."""
    out = np.zeros_like(images)
    height, width = images.shape[1:]
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = (
        images[:, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)])
    return out


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
    def probabilities(weight_sets, shifts):
        total = 0.0
        for weights in weight_sets:
            network.set_weights(weights)
            for dy, dx in [(0, 0), *shifts]:
                total = total + network.predict(shifted(images, dy, dx), batch_size=1000,
                                                verbose=0)
        return total

    def accuracy(probs):
        return float((probs.argmax(axis=1) == labels).mean())

    final = network.get_weights()
    averaged = [np.mean(layer, axis=0) for layer in zip(*keeper.last_epochs, strict=True)]
    scores = {"plain": accuracy(probabilities([final], [])),
              "tta5": accuracy(probabilities([final], SHIFTS_4)),
              "tta9": accuracy(probabilities([final], SHIFTS_8)),
              "swa": accuracy(probabilities([averaged], []))}
    if lr_cycles > 1:
        scores["snapshots"] = accuracy(probabilities(keeper.snapshots, []))
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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", help="name of the recipe in the results (needed to train)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="params override, as `dvc exp run -S`")
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
