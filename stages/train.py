"""Train stage: fit the network on the prepared digits and save the pixel-input model.

Reads   params.yaml (seed, model, train) and data/prepared/{train,val}_{images,labels}.npy
Writes  models/model.keras: raw pixels 0..255, float32 (N, 28, 28) -> probabilities (N, 10)
        dvclive/metrics.json (last epoch) and dvclive/plots/metrics/{train,eval}/
        {loss,accuracy}.tsv (one row per epoch; `eval` is the validation split)

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

from mnist_pipeline import distribute, fileio, paths, prepared, training
from mnist_pipeline.model import build_network, export_model, save_model
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        params = load_params()
        train_data, val_data = prepared.load("train"), prepared.load("val")
        worker = distribute.this_worker(params.train.distribute)
        strategy = distribute.make_strategy(params.train.distribute)
    except (OSError, ValueError, distribute.DistributeError) as error:
        sys.exit(f"train: {error}")

    with outputs(worker) as (model_file, callbacks):
        training.set_determinism(params.seed)
        with strategy.scope():
            network = build_network(params.model)
        network.summary()
        print(f"train: {strategy.num_replicas_in_sync} replica(s), {worker}")
        started = time.perf_counter()
        try:
            training.train(network, train_data, val_data, params.train, params.seed,
                           callbacks=callbacks, strategy=strategy)
        except distribute.CLUSTER_ERRORS as error:
            if not worker.multi_worker:
                raise
            sys.exit(distribute.describe_cluster_failure(error))
        print(f"train: {time.perf_counter() - started:.1f} s of training")
        try:
            save_model(export_model(network, params.model.test_time_shifts), model_file)
        except OSError as error:  # a full disk, say: one line, and no half-written model
            sys.exit(f"train: {paths.MODEL_FILE}: could not be written "
                     f"({error.strerror or error}); an earlier model there is unchanged")


@contextlib.contextmanager
def outputs(worker: distribute.Worker) -> Iterator[tuple[Path, list]]:
    """Where this worker saves the model, and the callbacks that log its training.

    The chief saves to models/model.keras, after checking that it can (minutes of training
    would be lost on a folder that cannot take the model), and logs to dvclive/. Any other
    worker logs nothing and saves into a scratch folder (see distribute.model_destination).
    """
    with distribute.model_destination(paths.MODEL_FILE, worker.chief) as model_file:
        if not worker.chief:
            yield model_file, []
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
            yield model_file, [DVCLiveCallback(live=live)]
        print(f"train: wrote {model_file}")


if __name__ == "__main__":
    main()
