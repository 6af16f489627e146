"""Export stage: the trained model as a TensorFlow SavedModel, the format TF Serving loads.

Reads   models/model.keras (train stage)
Writes  models/serving/: a SavedModel (Keras `model.export`) with the same input as the
        .keras file, raw pixels 0..255 float32 (N, 28, 28), and its probabilities (N, 10) as
        output, under the `serving_default` signature. Serve it with TF Serving by mounting
        the folder as version 1 of a model (README, "TensorFlow Serving").
On a missing or bad model it prints one line, writes nothing and exits 1.
"""

import sys

from mnist_pipeline import fileio, paths
from mnist_pipeline.model import load_model


def main() -> None:
    try:
        model = load_model(paths.MODEL_FILE)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"export: {error}")
    with fileio.atomic_directory(paths.SERVING_DIR) as temporary:
        model.export(str(temporary), format="tf_saved_model", verbose=False)
    print(f"export: wrote {paths.SERVING_DIR}")


if __name__ == "__main__":
    main()
