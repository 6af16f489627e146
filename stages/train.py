"""Train stage: fit the network on the prepared digits and save the pixel-input model.

Reads   params.yaml (seed, model, train) and data/prepared/{train,val}_{images,labels}.npy
Writes  models/model.keras: raw pixels 0..255, float32 (N, 28, 28) -> probabilities (N, 10)
        dvclive/metrics.json (last epoch) and dvclive/plots/metrics/{train,eval}/
        {loss,accuracy}.tsv (one row per epoch; `eval` is the validation split)

With train.distribute: multi_worker, every worker runs this script with its own TF_CONFIG;
only the chief (task `chief`, else `worker` 0) writes the outputs above.
"""

import contextlib
import os
import sys
import time

from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mnist_pipeline import fileio, paths, prepared, training
from mnist_pipeline.model import build_network, export_model, save_model
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        params = load_params()
        train_data, val_data = prepared.load("train"), prepared.load("val")
        distributed = params.train.distribute == "multi_worker"
        chief = training.is_chief(
            training.parse_tf_config(os.environ.get("TF_CONFIG")) if distributed else None)
        strategy = training.make_strategy(params.train.distribute)
        if chief:  # minutes of training would be lost on a folder that cannot take the model
            fileio.check_writable(paths.MODEL_FILE)
    except (OSError, ValueError, training.DistributeError) as error:
        sys.exit(f"train: {error}")

    training.set_determinism(params.seed)
    with strategy.scope():
        network = build_network(params.model)
    if chief:
        network.summary()
    print(f"train: {strategy.num_replicas_in_sync} replica(s), "
          f"{'chief' if chief else 'non-chief worker: writes no outputs'}")
    started = time.perf_counter()
    # dvcyaml=False: dvc.yaml declares the plots itself. save_dvc_exp=False: `dvc exp run`
    # records experiments; a direct `python stages/train.py` should not. resume=False (the
    # default) empties the folder first, so no TSV of an earlier run survives.
    try:
        with (Live(str(paths.TRAINING_LOG_DIR), dvcyaml=False, save_dvc_exp=False, report=None)
              if chief else contextlib.nullcontext()) as live:
            training.train(network, train_data, val_data, params.train, params.seed,
                           callbacks=[DVCLiveCallback(live=live)] if chief else [],
                           strategy=strategy)
    except training.CLUSTER_ERRORS as error:
        if not distributed:
            raise
        sys.exit(training.describe_cluster_failure(error))
    print(f"train: {time.perf_counter() - started:.1f} s of training")
    try:
        with training.model_destination(paths.MODEL_FILE, chief) as target:
            save_model(export_model(network, params.model.test_time_shifts), target)
    except OSError as error:  # a full disk, say: one line, and no half-written model
        sys.exit(f"train: {paths.MODEL_FILE}: could not be written "
                 f"({error.strerror or error}); an earlier model there is unchanged")
    if chief:
        print(f"train: wrote {paths.MODEL_FILE}")


if __name__ == "__main__":
    main()
