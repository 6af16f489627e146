"""Images per second: our train stage's fit (tf.data pipeline, mnist_pipeline.training.train)
against a plain ``model.fit`` on numpy arrays of the same network; predict throughput of the
exported model; and the latency of ``mnist-pipeline predict`` on one PNG.

    .venv/bin/python benchmarks/throughput.py                  # fashion-mnist, 10,000 images
    .venv/bin/python benchmarks/throughput.py --train-images 54000

Each fit runs 2 epochs (--rounds times, interleaved) and reports epoch 2 (epoch 1 includes
tracing the graph): time of the training batches only, validation excluded. Augmentation is
off in both for the comparison and on in a third run (ours as configured).
Writes benchmarks/results/throughput.json.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def fit_images_per_second(timer, n_images: int) -> dict[str, float]:
    rows = timer.epochs
    return {f"epoch{row['epoch']}_images_per_s": n_images / row["train_batches_wall_s"]
            for row in rows}


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--dataset", choices=common.DATASETS, default="fashion-mnist")
    parser.add_argument("--train-images", type=int, default=10_000,
                        help="first N training images (the whole split if larger)")
    parser.add_argument("--predict-images", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="CLI and predict repetitions")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the three fits, interleaved; report medians")
    parser.add_argument("--name", default="throughput",
                        help="results file benchmarks/results/NAME.json")
    args = parser.parse_args()

    import keras
    import numpy as np
    from PIL import Image

    from mnist_pipeline import training
    from mnist_pipeline.model import (
        build_network,
        export_model,
        predict_probabilities,
        save_model,
        to_pixels,
    )

    params = common.base_params([f"data.dataset={args.dataset}", "train.epochs=2",
                                 "train.early_stopping_patience=0", *args.overrides])
    splits = common.load_splits(args.dataset, params)
    train_images, train_labels = (array[:args.train_images] for array in splits["train"])
    val_data = tuple(array[:1000] for array in splits["val"])  # validation is not timed
    n = len(train_labels)
    no_augmentation = dataclasses.replace(
        params.train, augmentation=dataclasses.replace(
            params.train.augmentation, rotation_degrees=0.0, translation_fraction=0.0,
            zoom_fraction=0.0))
    Timer = common.epoch_timer()
    results: dict = {"dataset": args.dataset, "train_images": n,
                     "batch_size": params.train.batch_size, "params": common.as_dict(params)}

    def fit_ours(config):
        training.set_determinism(params.seed)
        network = build_network(params.model)
        timer = Timer()
        training.train(network, (train_images, train_labels), val_data, config, params.seed,
                       callbacks=[timer], verbose=2)
        return network, fit_images_per_second(timer, n)

    def fit_plain():
        training.set_determinism(params.seed)
        network = build_network(params.model)
        steps = -(-n // params.train.batch_size)
        network.compile(optimizer=training.make_optimizer(no_augmentation, steps),
                        loss=keras.losses.CategoricalCrossentropy(
                            label_smoothing=params.train.label_smoothing),
                        metrics=["accuracy"])
        timer = Timer()
        network.fit(train_images, keras.utils.to_categorical(train_labels, 10),
                    batch_size=params.train.batch_size, epochs=2, shuffle=True,
                    callbacks=[timer], verbose=2,
                    validation_data=(val_data[0], keras.utils.to_categorical(val_data[1], 10)))
        return network, fit_images_per_second(timer, n)

    runners = {
        "ours (tf.data), augmentation off": lambda: fit_ours(no_augmentation),
        "plain model.fit on numpy, augmentation off": fit_plain,
        "ours (tf.data), augmentation on": lambda: fit_ours(params.train),
    }
    # Rounds interleave the three fits, so that a busy neighbour slows all of them alike.
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            network, speeds = runner()
            rounds[name].append(speeds)
    # Median and best of the rounds: on a shared machine the best is the least disturbed.
    fits = {name: {key: statistics.median(speeds[key] for speeds in runs) for key in runs[0]}
            | {f"best_{key}": max(speeds[key] for speeds in runs) for key in runs[0]}
            | {"rounds": runs}
            for name, runs in rounds.items()}
    results["fit"] = fits
    results["rounds"] = args.rounds

    # Predict: the exported model (pixels 0..255), as the evaluate stage and the CLI use it.
    model = export_model(network, params.model.test_time_shifts)
    test_images = splits["test"][0]
    pixels = to_pixels(np.resize(test_images, (args.predict_images, 28, 28)))
    batch = params.evaluate.batch_size
    durations = []
    for _ in range(args.repeat + 1):
        started = time.perf_counter()
        predict_probabilities(model, pixels, batch)
        durations.append(time.perf_counter() - started)
    results["predict"] = {
        "images": len(pixels), "batch_size": batch,
        "first_call_images_per_s": len(pixels) / durations[0],
        "median_images_per_s": len(pixels) / statistics.median(durations[1:]),
        "durations_s": durations,
    }

    # `mnist-pipeline predict` on one PNG: a whole process (imports, model load, predict).
    cli = Path(sys.executable).parent / "mnist-pipeline"
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        model_path = Path(tmp) / "model.keras"
        save_model(model, model_path)
        png = Path(tmp) / "digit.png"
        Image.fromarray(to_pixels(test_images[:1])[0].astype(np.uint8)).save(png)
        latencies = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            done = subprocess.run([str(cli), "predict", "--model", str(model_path), str(png)],
                                  capture_output=True, text=True)
            latencies.append(time.perf_counter() - started)
            if done.returncode:
                raise SystemExit(f"mnist-pipeline predict failed:\n{done.stderr}")
        started = time.perf_counter()
        subprocess.run([str(cli), "predict", "--help"], capture_output=True, check=True)
        help_s = time.perf_counter() - started
    results["cli_predict_one_png"] = {"median_s": statistics.median(latencies),
                                      "runs_s": latencies, "help_s": help_s,
                                      "output": done.stdout.strip()}

    print(f"\n{args.dataset}: fit on {n:,} images, batch {params.train.batch_size}, "
          f"training batches only, median of {args.rounds} round(s)")
    common.print_table(["fit", "epoch 1 img/s", "epoch 2 img/s", "epoch 2 img/s, best round"],
                       [[name, row["epoch1_images_per_s"], row["epoch2_images_per_s"],
                         row["best_epoch2_images_per_s"]] for name, row in fits.items()])
    ours = fits["ours (tf.data), augmentation off"]["epoch2_images_per_s"]
    plain = fits["plain model.fit on numpy, augmentation off"]["epoch2_images_per_s"]
    results["ratio_ours_over_plain_epoch2"] = ours / plain
    print(f"ours / plain (augmentation off, epoch 2): {ours / plain:.2f}\n")
    predict = results["predict"]
    cli_row = results["cli_predict_one_png"]
    common.print_table(["measure", "value"], [
        [f"predict_probabilities, {predict['images']:,} images, batch {batch}: img/s (median)",
         predict["median_images_per_s"]],
        ["predict_probabilities, first call (with tracing): img/s",
         predict["first_call_images_per_s"]],
        [f"`mnist-pipeline predict` one PNG: s (median of {args.repeat})", cli_row["median_s"]],
        ["`mnist-pipeline predict --help`: s", cli_row["help_s"]],
    ])
    common.write_results(args.name, results)


if __name__ == "__main__":
    main()
