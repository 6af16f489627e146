"""Sample recipes judged by k-fold cross-validation over the 5,000 bundled digits, several seeds.

    cd benchmarks   # or give the paths; every command below runs from the repository root too
    ../.venv/bin/python sample_recipes.py --seed-per-fold --label sample    # recipes/sample.yaml
    ../.venv/bin/python sample_recipes.py --seed-per-fold --label 1conv -S model.convs_per_block=1
    ../.venv/bin/python sample_recipes.py --seed-per-fold --reference
    ../.venv/bin/python sample_recipes.py --folds 0,1 --seeds 1,2 --label x -S train.epochs=30
    ../.venv/bin/python sample_recipes.py --table                           # print, no training

One 1,000-digit test split both is noisy (one digit = 0.1%) and invites selection: the recipe
that wins on it is partly the one that happened to suit those digits. Here the 5,000
mnist-sample digits are cut into ``--k`` stratified folds (fixed ``--split-seed``); each run
trains on all the other folds (4,000 digits for k=5, about what `make sample` trains on) and
scores the held-out fold with the exported pixel-input model, as the evaluate stage does. The
held-out fold is also fit's validation data, which only logs: recipes with early stopping
(which would select on it) are refused. Each (fold, seed) pair is one run; ``--seeds`` sets
the training seed (weights, shuffling, augmentation) and ``--seed-per-fold`` pairs fold i with
seed ``seeds[0] + i`` so that a few runs vary both.

Params: params.yaml, then recipes/sample.yaml (what `make sample` runs) unless
``--no-sample-recipe``, then ``-S key=value``. ``--reference``: the Keras "simple MNIST
convnet" of time_to_accuracy.py (15 epochs, Adam 1e-3, batch 128) on the same folds.

Runs accumulate in benchmarks/results/sample_recipes.json (one entry per label, fold and seed;
rerunning one replaces it), so recipes can be measured one invocation at a time; the table
gives per label: runs, mean and std of the held-out accuracy, and mean wall and process-CPU
seconds of training (fit, per-epoch validation included), with ratios to the reference.
"""

from __future__ import annotations

import statistics
import time

import common
import numpy as np

RESULTS_NAME = "sample_recipes"


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


def load_digits():
    """The 5,000 mnist-sample digits as the pipeline gets them: float32 in [0, 1], labels."""
    import tempfile
    from pathlib import Path

    from mnist_pipeline import preprocess
    from mnist_pipeline.datasets import get_dataset
    from mnist_pipeline.download import download_dataset

    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        download_dataset(get_dataset("mnist-sample"), Path(tmp) / "raw")
        raw = preprocess.load_raw(Path(tmp) / "raw")
    images, labels = raw.train
    return preprocess.normalize(images), labels


def fold_splits(images, labels, folds, fold):
    held_out = folds == fold
    train = (images[~held_out], labels[~held_out])
    test = (images[held_out], labels[held_out])
    return {"train": train, "val": test, "test": test}


def paired_difference(runs: list[dict], label: str, baseline: str) -> dict | None:
    """Mean (and std) of ``label`` minus ``baseline`` over the (fold, seed) runs both have:
    the same held-out digits, so the folds' own difficulty cancels out."""
    def by_pair(name):
        return {(r["k"], r["split_seed"], r["fold"], r["seed"]): r["test_accuracy"]
                for r in runs if r["label"] == name}
    mine, base = by_pair(label), by_pair(baseline)
    shared = sorted(set(mine) & set(base))
    if not shared or label == baseline:
        return None
    differences = [mine[pair] - base[pair] for pair in shared]
    return {"pairs": len(shared), "mean": statistics.mean(differences),
            "std": statistics.stdev(differences) if len(differences) > 1 else None}


def summarize(runs: list[dict], baseline: str | None = None) -> list[dict]:
    labels = list(dict.fromkeys(run["label"] for run in runs))
    baseline = baseline or labels[0]
    reference = [run for run in runs if run["label"] == "reference"]
    ref_wall = statistics.mean(r["train_wall_s"] for r in reference) if reference else None
    ref_cpu = statistics.mean(r["train_cpu_s"] for r in reference) if reference else None
    rows = []
    for label in labels:
        mine = [run for run in runs if run["label"] == label]
        accuracies = [run["test_accuracy"] for run in mine]
        wall = statistics.mean(run["train_wall_s"] for run in mine)
        cpu = statistics.mean(run["train_cpu_s"] for run in mine)
        rows.append({
            "label": label, "runs": len(mine),
            "folds": sorted({run["fold"] for run in mine}),
            "seeds": sorted({run["seed"] for run in mine}),
            "mean": statistics.mean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "min": min(accuracies), "max": max(accuracies),
            "train_wall_s": wall, "train_cpu_s": cpu,
            "wall_vs_reference": ref_wall and wall / ref_wall,
            "cpu_vs_reference": ref_cpu and cpu / ref_cpu,
            "vs_baseline": paired_difference(runs, label, baseline),
            "overrides": mine[-1]["overrides"],
        })
    return rows


def print_summary(results: dict, baseline: str | None = None) -> None:
    rows = summarize(results["runs"], baseline)
    baseline = baseline or rows[0]["label"]

    def versus(row):
        diff = row["vs_baseline"]
        if not diff:
            return None
        spread = f" ± {diff['std']:.4f}" if diff["std"] is not None else ""
        return f"{diff['mean']:+.4f}{spread} ({diff['pairs']})"

    common.print_table(
        ["recipe", "runs", "mean acc", "std", "min..max", f"vs {baseline}, same runs",
         "train wall s", "train CPU s", "wall / ref", "CPU / ref"],
        [[row["label"], row["runs"], f"{row['mean']:.4f}", row["std"] and f"{row['std']:.4f}",
          f"{row['min']:.3f}..{row['max']:.3f}", versus(row), row["train_wall_s"],
          row["train_cpu_s"], row["wall_vs_reference"] and f"{row['wall_vs_reference']:.2f}",
          row["cpu_vs_reference"] and f"{row['cpu_vs_reference']:.2f}"] for row in rows])
    for row in rows:
        print(f"  {row['label']}: {' '.join(row['overrides']) or '(no overrides)'}")


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--label", help="name of the recipe in the results (required to train)")
    parser.add_argument("--no-sample-recipe", action="store_true",
                        help="start from params.yaml alone, not recipes/sample.yaml")
    parser.add_argument("--reference", action="store_true",
                        help="train the Keras reference convnet (label 'reference')")
    parser.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--folds", default="0,1,2,3,4", help="which folds to hold out")
    parser.add_argument("--seeds", default="1", help="training seeds, comma-separated")
    parser.add_argument("--seed-per-fold", action="store_true",
                        help="one run per fold, fold i with seed seeds[0] + i")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--baseline",
                        help="label the table compares each recipe with, run by run "
                             "(default: the first one measured)")
    args = parser.parse_args()

    results = common.load_runs(RESULTS_NAME)
    if args.table:
        print_summary(results, args.baseline)
        return
    label = "reference" if args.reference else args.label
    if not label:
        parser.error("--label NAME (or --reference) is needed to train")

    import time_to_accuracy

    overrides = [] if args.no_sample_recipe else common.sample_overrides()
    overrides += args.overrides
    params = common.base_params(overrides)
    if params.train.early_stopping_patience and not args.reference:
        parser.error("early stopping would select on the held-out fold: set "
                     "train.early_stopping_patience=0")
    fold_list = [int(item) for item in args.folds.split(",")]
    seed_list = [int(item) for item in args.seeds.split(",")]
    pairs = ([(fold, seed_list[0] + fold) for fold in fold_list] if args.seed_per_fold
             else [(fold, seed) for seed in seed_list for fold in fold_list])

    images, labels = load_digits()
    folds = stratified_folds(labels, args.k, args.split_seed)
    for fold, seed in pairs:
        splits = fold_splits(images, labels, folds, fold)
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        if args.reference:
            epochs, accuracy, weights = time_to_accuracy.run_reference(seed, splits, 15, None)
            by_shifts = None
        else:
            run_params = common.apply_overrides(params, [f"seed={seed}"])
            epochs, accuracy, weights, by_shifts = time_to_accuracy.run_ours(run_params, splits,
                                                                             None)
        run = {
            "label": label, "overrides": overrides if not args.reference else [],
            "k": args.k, "split_seed": args.split_seed, "fold": fold, "seed": seed,
            "train_size": len(splits["train"][1]), "test_size": len(splits["test"][1]),
            "test_accuracy": accuracy, "weights": weights, "epochs_run": epochs[-1]["epoch"],
            "train_wall_s": epochs[-1]["wall_s"], "train_cpu_s": epochs[-1]["cpu_s"],
            "run_wall_s": time.perf_counter() - started_wall,
            "run_cpu_s": time.process_time() - started_cpu,
            "final_train_accuracy": epochs[-1].get("accuracy"),
            # the same weights saved with each model.test_time_shifts (0 = plain)
            "test_accuracy_by_test_time_shifts": by_shifts,
        }
        print(f"{label} fold {fold} seed {seed}: test {accuracy:.4f}, "
              f"train {run['train_wall_s']:.1f} s wall, {run['train_cpu_s']:.1f} s CPU")
        common.save_run(RESULTS_NAME, results, run, ("label", "k", "split_seed", "fold", "seed"))
    print_summary(results, args.baseline)


if __name__ == "__main__":
    main()
