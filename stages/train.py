"""Train stage: fit the network on the prepared digits and save the pixel-input model.

Reads   params.yaml (seed, model, train) and data/prepared/{train,val}_{images,labels}.npy
Writes  models/model.keras: raw pixels 0..255, float32 (N, 28, 28) -> probabilities (N, 10)
        dvclive/metrics.json (last epoch) and dvclive/plots/metrics/{train,eval}/
        {loss,accuracy}.tsv (one row per epoch; `eval` is the validation split)
"""

import sys
import time

from dvclive import Live
from dvclive.keras import DVCLiveCallback

from mnist_pipeline import paths, training
from mnist_pipeline.model import build_network, export_model, load_prepared, save_model
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        params = load_params()
        train_data, val_data = load_prepared("train"), load_prepared("val")
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"train: {error}")

    training.set_determinism(params.seed)
    network = build_network(params.model)
    network.summary()
    started = time.perf_counter()
    # dvcyaml=False: dvc.yaml declares the plots itself. save_dvc_exp=False: `dvc exp run`
    # records experiments; a direct `python stages/train.py` should not. resume=False (the
    # default) empties the folder first, so no TSV of an earlier run survives.
    with Live(str(paths.TRAINING_LOG_DIR), dvcyaml=False, save_dvc_exp=False,
              report=None) as live:
        training.train(network, train_data, val_data, params.train, params.seed,
                       callbacks=[DVCLiveCallback(live=live)])
    print(f"train: {time.perf_counter() - started:.1f} s of training")
    save_model(export_model(network), paths.MODEL_FILE)
    print(f"train: wrote {paths.MODEL_FILE}")


if __name__ == "__main__":
    main()
