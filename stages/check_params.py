"""Check-params stage: validate the whole of params.yaml before any stage removes its outputs.

DVC deletes a stage's outputs before it runs the stage's command, so a typo that only train
notices (after seconds of TensorFlow import) has already cost the model and the training log.
This stage comes first in the pipeline (download depends on its output): it runs whenever any
param changes, reads nothing but params.yaml, imports no TensorFlow, and stops `dvc repro` /
`dvc exp run` in well under a second with the one-line message every stage would give.

Reads   params.yaml (all of it)
Writes  data/params.ok: a fixed text, so a valid change leaves it byte-identical and DVC
        reruns only the stages whose own params changed.
"""

import sys

from mnist_pipeline import fileio, paths
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        load_params()
    except (FileNotFoundError, ValueError) as error:  # ParamsError included
        sys.exit(f"check_params: {error}")
    fileio.write_text(paths.PARAMS_CHECKED,
                      f"{paths.PARAMS_FILE} passed mnist_pipeline/params.py\n")


if __name__ == "__main__":
    main()
