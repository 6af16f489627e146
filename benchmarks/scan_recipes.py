"""How well does a model read scanned paper digits, and does a scan-like fine-tuning teach it?

    .venv/bin/python benchmarks/drawn_recipes.py --label base --fold 0 --save /work/cache/base-fold0
    .venv/bin/python benchmarks/scan_recipes.py --base /work/cache/base-fold0 --fold 0 --label today
    .venv/bin/python benchmarks/scan_recipes.py --base /work/cache/base-fold0 --fold 0 \
        --label scans50-1ep --share 0.5 --epochs 1 --learning-rate 3e-4
    .venv/bin/python benchmarks/scan_recipes.py --table

The base is a default model trained by drawn_recipes.py on one fold (``--save``: the model,
its inner network, and the fold's digits). Every run is scored on three sets it never trained
on, with the accuracy and, against the base on the same digits, how many answers it fixed and
broke (the paired view of noise):

- ``optdigits``: UCI's scanned forms (``--optdigits``, optdigits-orig.tra, 1,934 32x32 binary
  digits of 30 people; checked against its digest), each made a black-on-white picture and read
  by digit_image.normalize_digit, as ``predict`` reads a scan (a few are checked against
  pictures.picture_to_digit on PNG bytes). Validation only: nothing here trains on it.
- ``mnist``: the fold's 6,000 held-out MNIST digits; ``pen``: the fold's held-out pen writers.

``--label today`` (no ``--epochs``) scores the base as it is; with ``--against DIR`` (a base of
the same fold trained another way: ``drawn_recipes.py --scan-copies``) it counts fixed and
broke against that one. A recipe fine-tunes the base's network for ``--epochs`` epochs over the
fold's training digits (MNIST and the pen digits, ``--digits`` of them per epoch, all by
default): Adam at ``--learning-rate``, constant or (``--schedule cosine``) down to 0, with a
moving average of the weights (``--ema``) or not, the training's label smoothing and
augmentation, batch normalization frozen unless ``--train-bn``. A share ``--share`` of each
epoch's digits is made scan-like anew, at a scan's own size, before normalize_digit
(mnist_pipeline.scans.scan_digits; ``--style`` changes a field of its ScanStyle). The result is
exported with the base's test-time shifts and temperature. CPU seconds are this process's, for
the degradation and the fit. Runs accumulate in benchmarks/results/scan_recipes.json, one entry
per label and fold.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path

import common
import numpy as np

from mnist_pipeline import scans
from mnist_pipeline.prepared import normalize

RESULTS_NAME = "scan_recipes.json"
OPTDIGITS = Path("/work/shared/optdigits/optdigits-orig.tra")
CHECKED_AS_PREDICT = 20  # optdigits pictures also read through PNG bytes, as predict does


def load_base(folder: Path):
    from mnist_pipeline.inference import load_keras_model

    data = dict(np.load(folder / "data.npz"))
    base = json.loads((folder / "base.json").read_text())
    return load_keras_model(folder / "model.keras"), data, base


def optdigits_as_predict_reads(path: Path, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The scanned forms, read MNIST-style as ``predict`` would: (float32 (N, 28, 28), labels).
    The first few are also written as PNG and read by pictures.picture_to_digit, which must
    give the same pixels."""
    from PIL import Image

    from mnist_pipeline.pictures import picture_to_digit

    bitmaps, labels = scans.read_optdigits(path, verify=verify)
    pictures = scans.optdigits_pictures(bitmaps)
    digits = scans.normalize_all(pictures)
    for picture, digit in zip(pictures[:CHECKED_AS_PREDICT], digits, strict=False):
        png = io.BytesIO()
        Image.fromarray(picture.astype(np.uint8)).save(png, format="PNG")
        if not np.allclose(picture_to_digit(png.getvalue()), digit, atol=1e-3):
            raise SystemExit("optdigits: normalize_all differs from predict's reading")
    return digits, labels


def answers(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(images.astype(np.float32), batch_size=1024, verbose=0)
                      ).argmax(axis=1)


def score(predicted: np.ndarray, labels: np.ndarray, base: np.ndarray | None) -> dict:
    """Accuracy, errors, the commonest confusions, and (against ``base``'s answers) how many
    answers turned right ("fixed") and wrong ("broke")."""
    right = predicted == labels
    pairs: dict[str, int] = {}
    for true, guess in zip(labels[~right], predicted[~right], strict=True):
        key = f"{true}->{guess}"
        pairs[key] = pairs.get(key, 0) + 1
    result = {"accuracy": float(right.mean()), "errors": int((~right).sum()),
              "digits": len(labels),
              "confusions": dict(sorted(pairs.items(), key=lambda item: -item[1])[:8])}
    if base is not None:
        was_right = base == labels
        result["fixed"] = int((right & ~was_right).sum())
        result["broke"] = int((~right & was_right).sum())
    return result


def scan_style(overrides: list[str]) -> scans.ScanStyle:
    """scans.ScanStyle with ``name=value`` overrides (values as YAML: ``heights=[12,32]``)."""
    import yaml

    values = {}
    for override in overrides:
        name, _equals, value = override.partition("=")
        parsed = yaml.safe_load(value)
        values[name] = tuple(parsed) if isinstance(parsed, list) else parsed
    try:
        return scans.ScanStyle(**values)
    except TypeError as error:
        raise SystemExit(f"--style: {error}") from None


def finetune_scans(network, data: dict, args: argparse.Namespace, params) -> dict:
    """Fine-tune ``network`` (images in [0, 1] -> softmax) in place: ``args.epochs`` epochs over
    ``args.digits`` training digits each, ``args.share`` of them scan-like. Returns the CPU
    seconds of the degradation and of the fit."""
    import keras

    from mnist_pipeline.model import build_augmentation
    from mnist_pipeline.training import make_dataset, set_determinism

    set_determinism(args.seed)
    if not args.train_bn:
        for layer in network.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # Keras 3: frozen BN also runs in inference mode
    rate = args.learning_rate
    if args.schedule == "cosine":  # anneal to 0, as the base's own training ended
        steps = args.epochs * math.ceil(min(args.digits or len(data["train_labels"]),
                                            len(data["train_labels"])) / params.train.batch_size)
        rate = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    ema = {"use_ema": True, "ema_momentum": args.ema} if args.ema else {}
    network.compile(optimizer=keras.optimizers.Adam(rate, **ema),
                    loss=keras.losses.CategoricalCrossentropy(
                        label_smoothing=params.train.label_smoothing))
    augmentation = build_augmentation(params.train.augmentation, args.seed)
    rng = np.random.default_rng(args.seed)
    images, labels = data["train_images"], data["train_labels"]
    degrade_cpu = fit_cpu = 0.0
    for epoch in range(args.epochs):
        chosen = np.sort(rng.choice(len(labels), size=min(args.digits or len(labels),
                                                           len(labels)), replace=False))
        started = time.process_time()
        shown, changed = scans.scan_digits(images[chosen], args.share, rng,
                                           scan_style(args.style), labels[chosen])
        degrade_cpu += time.process_time() - started
        dataset = make_dataset(normalize(shown), labels[chosen], params.train.batch_size,
                               shuffle_seed=args.seed + epoch, augmentation=augmentation)
        started = time.process_time()
        history = network.fit(dataset, epochs=1, verbose=0)
        fit_cpu += time.process_time() - started
        print(f"epoch {epoch + 1}/{args.epochs}: {len(chosen)} digits, {int(changed.sum())} "
              f"scan-like, loss {history.history['loss'][-1]:.4f}", flush=True)
    return {"degrade_cpu_s": round(degrade_cpu, 1), "fit_cpu_s": round(fit_cpu, 1)}


def run(args: argparse.Namespace) -> dict:
    import keras

    from mnist_pipeline.model import export_model

    params = common.base_params(args.overrides)
    model, data, base = load_base(args.base)
    optdigits = optdigits_as_predict_reads(args.optdigits, verify=not args.smoke)
    sets = {"optdigits": optdigits, "mnist": (data["mnist_images"], data["mnist_labels"]),
            "pen": (data["drawn_images"], data["drawn_labels"])}
    started = time.process_time()
    base_answers = {name: answers(model, images) for name, (images, _labels) in sets.items()}
    score_cpu = time.process_time() - started
    recipe = {"share": args.share, "epochs": args.epochs, "learning_rate": args.learning_rate,
              "schedule": args.schedule, "ema": args.ema,
              "style": dataclasses.asdict(scan_style(args.style)),
              "digits": args.digits, "train_bn": args.train_bn, "seed": args.seed,
              "interpolate": args.interpolate}
    cost = {"degrade_cpu_s": 0.0, "fit_cpu_s": 0.0}
    tuned = model
    if args.epochs:
        network = keras.saving.load_model(args.base / "network.keras")
        base_weights = network.get_weights()
        cost = finetune_scans(network, data, args, params)
        if args.interpolate != 1.0:  # WiSE-FT: a point on the line from the base to the tuned
            network.set_weights([(1 - args.interpolate) * before + args.interpolate * after
                                 for before, after in zip(base_weights, network.get_weights(),
                                                          strict=True)])
        tuned = export_model(network, base["test_time_shifts"], base["temperature"])
    reference = None if tuned is model else base_answers
    if args.against:  # another model of the same fold: fixed / broke against its answers
        other, other_data, _ = load_base(args.against)
        for key in ("mnist_images", "mnist_labels", "drawn_images", "drawn_labels"):
            if not np.array_equal(data[key], other_data[key]):
                raise SystemExit(f"--against: its {key} differ from --base's (another fold?)")
        reference = {name: answers(other, images) for name, (images, _labels) in sets.items()}
    scores = {}
    for name, (_images, labels) in sets.items():
        predicted = base_answers[name] if tuned is model else answers(tuned, sets[name][0])
        scores[name] = score(predicted, labels, None if reference is None else reference[name])
    return {"label": args.label, "fold": args.fold, "base": str(args.base),
            "against": str(args.against) if args.against else None,
            "recipe": recipe if args.epochs else None, **cost,
            "cpu_s": round(cost["degrade_cpu_s"] + cost["fit_cpu_s"], 1),
            "score_cpu_s": round(score_cpu, 1), "machine": common.machine(), **scores}


def table(runs: list[dict]) -> None:
    common.print_table(
        ["recipe", "fold", "optdigits %", "MNIST held-out %", "pen held-out %",
         "fixed / broke (opt, MNIST, pen)", "CPU s"],
        [[run["label"], run["fold"],
          *(f"{100 * run[name]['accuracy']:.2f}" for name in ("optdigits", "mnist", "pen")),
          " ".join(f"+{run[name]['fixed']}/-{run[name]['broke']}" if "fixed" in run[name]
                   else "-" for name in ("optdigits", "mnist", "pen")),
          f"{run['cpu_s']:.0f}"] for run in runs])


def load_runs() -> list[dict]:
    path = common.results_dir() / RESULTS_NAME
    return json.loads(path.read_text()) if path.exists() else []


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--base", type=Path, help="a folder drawn_recipes.py --save wrote")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--label", default="today")
    parser.add_argument("--optdigits", type=Path, default=OPTDIGITS)
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another saved base of the same fold: fixed / broke against it")
    parser.add_argument("--share", type=float, default=0.5,
                        help="of each epoch's digits made scan-like")
    parser.add_argument("--epochs", type=int, default=0, help="0: score the base as it is")
    parser.add_argument("--digits", type=int, default=0,
                        help="training digits per epoch (0: all of the fold's)")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                        help="the rate: constant, or a cosine from it down to 0")
    parser.add_argument("--ema", type=float, default=0.0, metavar="MOMENTUM",
                        help="keep a moving average of the weights (Adam's use_ema), as train")
    parser.add_argument("--style", action="append", default=[], metavar="NAME=VALUE",
                        help="a field of mnist_pipeline.scans.ScanStyle (repeatable)")
    parser.add_argument("--train-bn", action="store_true",
                        help="let batch normalization learn (frozen by default)")
    parser.add_argument("--interpolate", type=float, default=1.0, metavar="ALPHA",
                        help="keep base + ALPHA x (tuned - base) of every weight (Wortsman et "
                             "al. 2022, WiSE-FT); 1: the tuned weights")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        common.start_smoke()
    if not args.table:
        if args.base is None:
            parser.error("--base is needed (or --table)")
        result = run(args)
        runs = [r for r in load_runs() if (r["label"], r["fold"]) != (args.label, args.fold)]
        (common.results_dir() / RESULTS_NAME).write_text(
            json.dumps([*runs, result], indent=1) + "\n")
    table(load_runs())


if __name__ == "__main__":
    main(sys.argv[1:])
