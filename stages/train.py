"""Train stage: fit the network on the prepared digits and save the pixel-input model.

Reads   params.yaml (seed, model, train) and data/prepared/{train,val}_{images,labels}.npy
Writes  models/base.keras: raw pixels 0..255, float32 (N, 28, 28) -> probabilities (N, 10),
        calibrated: the temperature is fitted on the validation split after training (the
        finetune stage makes it models/model.keras, learning the corrections if any), and so
        is the model's `uncertain` threshold, which the saved model carries too
        dvclive/metrics.json (the last epoch's validation accuracy, `temperature`,
        `min_confidence`: that threshold) and
        dvclive/plots/metrics/{train,eval}/{loss,accuracy}.tsv (one row per epoch; `eval`
        is the validation split)

With train.distribute: multi_worker, every worker runs this script with its own TF_CONFIG;
only the chief (task `chief`, else `worker` 0) writes the outputs above.
"""

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mnist_pipeline import calibration, distribute, fileio, paths, prepared, training
from mnist_pipeline.model import build_network, export_model
from mnist_pipeline.model_file import save_model
from mnist_pipeline.params import load_params

CALIBRATION_BATCH_SIZE = 1024  # validation digits per call while fitting the temperature


def main() -> None:
    try:
        params = load_params()
        train_data, val_data = prepared.load("train"), prepared.load("val")
        worker = distribute.this_worker(params.train.distribute)
        strategy = distribute.make_strategy(params.train.distribute)
    except (OSError, ValueError, distribute.DistributeError) as error:
        sys.exit(f"train: {error}")

    with outputs(worker) as (model_file, live):
        callbacks = [DVCLiveCallback(live=live)] if live is not None else []
        training.set_determinism(params.seed)
        with strategy.scope():
            network = build_network(params.model)
        # One line, not Keras's 40-line table: the layers are in model.py, the size is here.
        print(f"train: {network.name}, {network.count_params():,} weights; "
              f"{strategy.num_replicas_in_sync} replica(s), {worker}")
        started = time.perf_counter()
        try:
            training.train(network, train_data, val_data, params.train, params.seed,
                           callbacks=[*callbacks, training.EpochLines(params.train.epochs)],
                           strategy=strategy, verbose=0)
        except distribute.CLUSTER_ERRORS as error:
            if not worker.multi_worker:
                raise
            sys.exit(distribute.describe_cluster_failure(error))
        print(f"train: {time.perf_counter() - started:.1f} s of training")
        fitted = fit_calibration(network, params.model.test_time_shifts, val_data)
        print(f"train: temperature {fitted.temperature} (validation NLL "
              f"{fitted.nll_before:.4f} -> {fitted.nll_after:.4f}), uncertain below "
              f"{fitted.min_confidence}")
        if live is not None:
            live.log_metric("temperature", fitted.temperature, plot=False)
            live.log_metric("min_confidence", fitted.min_confidence, plot=False)
        try:
            save_model(export_model(network, params.model.test_time_shifts,
                                    fitted.temperature, fitted.min_confidence), model_file)
        except OSError as error:  # a full disk, say: one line, and no half-written model
            sys.exit(f"train: {paths.BASE_MODEL_FILE}: could not be written "
                     f"({error.strerror or error}); an earlier model there is unchanged")


def fit_calibration(network, test_time_shifts: int, val_data) -> calibration.Calibration:
    """The temperature that makes the saved model's probabilities honest on the validation
    digits, and the `uncertain` threshold of those probabilities (one mixed validation
    split: one source), fitted on the trained network (see mnist_pipeline.calibration)."""
    return calibration.calibrate_network(network, test_time_shifts, val_data,
                                         batch_size=CALIBRATION_BATCH_SIZE)


@contextlib.contextmanager
def outputs(worker: distribute.Worker) -> Iterator[tuple[Path, Live | None]]:
    """Where this worker saves the model, and the dvclive logger of its training.

    The chief saves to models/base.keras, after checking that it can (minutes of training
    would be lost on a folder that cannot take the model), and logs to dvclive/. Any other
    worker logs nothing and saves into a scratch folder (see distribute.model_destination).
    """
    with distribute.model_destination(paths.BASE_MODEL_FILE, worker.chief) as model_file:
        if not worker.chief:
            yield model_file, None
            return
        try:
            fileio.check_writable(model_file)
        except OSError as error:
            sys.exit(f"train: {error}")
        # dvcyaml=False: dvc.yaml declares the plots itself. save_dvc_exp=False: `dvc exp run`
        # records experiments; a direct `python stages/train.py` should not. resume=False (the
        # default) empties the folder first, so no TSV of an earlier run survives.
        with Live(str(paths.TRAINING_LOG_DIR), dvcyaml=False, save_dvc_exp=False,
                  report=None) as live:
            yield model_file, live
        # dvclive's summary holds every last value and the step; dvclive/metrics.json keeps the few
        # people compare, so that `dvc metrics show` stays a short list.
        fileio.write_json(paths.TRAINING_METRICS, training.headline_metrics(
            fileio.read_json(paths.TRAINING_METRICS)))
        print(f"train: wrote {model_file}")


if __name__ == "__main__":
    main()
