"""Read corrections stage: the folders of labelled pictures -> what finetune learns and tests.

Reads   params corrections.folders and corrections.test_fraction (via load_params), and
        those folders under data/extra/ (labels.csv and pictures; `dvc add` each one)
Writes  data/corrections/train_{images,labels}.npy (each writer's earlier pictures, learned
        by the finetune stage) and test_{images,labels}.npy (each writer's latest: the
        `extra` test source), where there are any; data/corrections/summary.json and
        metrics/corrections.json (pictures and writers read, learned, held out)
No TensorFlow: a bad folder fails here in seconds, with one line naming the folder, the line
of labels.csv and the problem, before the finetune stage touches the model; the base model,
the prepared digits and models/model.keras of the last good run are left as they were.
"""

import shutil
import sys

from mnist_pipeline import corrections_split, fileio, paths, prepared
from mnist_pipeline.params import load_params


def main() -> None:
    try:
        params = load_params()
        folders = params.corrections.folders
        pictures = corrections_split.read_folders(folders)
        splits = corrections_split.split_corrections(pictures, folders,
                                                     params.corrections.test_fraction)
    except (OSError, ValueError) as error:  # LabelledFolderError and ParamsError included
        sys.exit(f"read_corrections: {error}")

    shutil.rmtree(paths.CORRECTIONS_DIR, ignore_errors=True)  # `dvc repro` removed it already
    paths.CORRECTIONS_DIR.mkdir(parents=True)
    for split, (images, labels) in (("train", splits.learn), ("test", splits.test)):
        if len(labels):
            prepared.save(split, images, labels, paths.CORRECTIONS_DIR)
    summary = splits.summary()
    fileio.write_json(paths.CORRECTIONS_SUMMARY, summary)
    fileio.write_json(paths.CORRECTIONS_METRICS, summary)
    if not folders:
        print("read_corrections: no folders in corrections.folders: the model is the base model")
        return
    print(f"read_corrections: {summary['pictures']} pictures of {summary['writers']} writer(s) "
          f"in {', '.join(folders)}: {summary['learned']} to learn, "
          f"{summary['held_out']} held out (the latest of {summary['writers_held_out']} "
          "writer(s)) as the `extra` test source")
    if not summary["held_out"]:
        why = ("corrections.test_fraction is 0" if not params.corrections.test_fraction
               else "no writer has 3 or more pictures yet")
        print(f"read_corrections: {why}: no `extra` test source this round (every picture is "
              "learned)")


if __name__ == "__main__":
    main()
