"""Finetune stage: the base model learns the corrections, and becomes models/model.keras.

Reads   params seed, corrections (repeats, replay, epochs, learning_rate, batch_size,
        augmentation), model.test_time_shifts and train.label_smoothing (the base's);
        models/base.keras (the train stage's);
        data/corrections/ (read_corrections: the pictures to learn); data/prepared/
        train_* (the replay) and val_* (the temperature is fitted again on them)
Writes  models/model.keras, the model export, evaluate, predict and serve use: the base
        model fine-tuned on the corrections (mnist_pipeline/finetune.py), or, with none to
        learn, a copy of the base model, made without TensorFlow
A round of corrections reruns read_corrections, this stage and those after it, never the
download, preprocess or train stages (DVC restores the base model from its cache).
"""

import sys
import time

from mnist_pipeline import fileio, paths, prepared
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        params = load_params()
        learn = (prepared.load("train", paths.CORRECTIONS_DIR)
                 if paths.prepared_labels("train", paths.CORRECTIONS_DIR).exists() else None)
        if not paths.BASE_MODEL_FILE.is_file():
            raise FileNotFoundError(f"{paths.BASE_MODEL_FILE}: missing; run `dvc repro train`")
    except (OSError, ValueError) as error:
        sys.exit(f"finetune: {error}")
    if learn is None:
        fileio.copy_file(paths.BASE_MODEL_FILE, paths.MODEL_FILE)
        print(f"finetune: no corrections to learn: {paths.MODEL_FILE} is the base model")
        return
    finetune_and_save(params, learn)


def finetune_and_save(params, learn) -> None:
    """Fine-tune the base model on ``learn`` with a replay of its own training digits, fit
    the temperature and the `uncertain` threshold again, and save the result atomically."""
    from mnist_pipeline import calibration, finetune, training
    from mnist_pipeline.inference import load_keras_model
    from mnist_pipeline.model import export_model
    from mnist_pipeline.model_file import save_model

    try:
        replay, val_data = prepared.load("train"), prepared.load("val")
        base = load_keras_model(paths.BASE_MODEL_FILE)
        network = finetune.network_of(base)
    except (OSError, ValueError) as error:
        sys.exit(f"finetune: {error}")
    training.set_determinism(params.seed)
    started = time.process_time(), time.perf_counter()
    finetune.finetune(network, learn, replay, params.corrections, params.seed,
                      label_smoothing=params.train.label_smoothing)
    cpu, wall = time.process_time() - started[0], time.perf_counter() - started[1]
    print(f"finetune: {len(learn[1])} corrections learned in {wall:.1f} s ({cpu:.1f} CPU s)")
    # The weights moved: the temperature and the `uncertain` threshold are fitted again, on
    # the same validation digits as the base's.
    fitted = calibration.calibrate_network(network, params.model.test_time_shifts, val_data)
    print(f"finetune: temperature {fitted.temperature}, uncertain below "
          f"{fitted.min_confidence}")
    try:
        save_model(export_model(network, params.model.test_time_shifts, fitted.temperature,
                                fitted.min_confidence), paths.MODEL_FILE)
    except OSError as error:
        sys.exit(f"finetune: {paths.MODEL_FILE}: could not be written "
                 f"({error.strerror or error}); an earlier model there is unchanged")
    print(f"finetune: wrote {paths.MODEL_FILE}")


if __name__ == "__main__":
    main()
