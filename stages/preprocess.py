"""Preprocess stage: raw IDX files -> normalized, stratified train / val / test arrays.

Reads  params `seed` and `preprocess` (via load_params), data/raw/ (IDX files,
       manifest.json, and the UCI pen-digit files where the download stage fetched them).
Writes data/prepared/<split>_images.npy (float32, N x 28 x 28, values in [0, 1]) and
       data/prepared/<split>_labels.npy (uint8 0..9) for train and val (both sources), test
       (the dataset's) and test_drawn (the pen digits' test writers, with data.drawn);
       data/prepared/sources.json ({source: test split}), metrics/data.json (dataset and
       split sizes), plots/class_counts/<split>.csv (digit,count).
On bad params or raw files it prints one line naming the problem, writes nothing and exits 1.
"""

import sys

from mnist_pipeline import fileio, paths, prepared, preprocess
from mnist_pipeline.params import load_params


def main() -> None:
    # Everything that can fail on bad input happens before the first write.
    try:
        params = load_params()
        raw = preprocess.load_raw(paths.RAW_DIR)
        splits = preprocess.prepare_splits(raw, params.preprocess, params.seed)
    except (FileNotFoundError, ValueError) as error:  # ParamsError, IdxFormatError included
        sys.exit(f"preprocess: {error}")

    for split, (images, labels) in splits.items():
        prepared.save(split, images, labels)
        fileio.write_csv(paths.class_counts_file(split), preprocess.class_count_table(labels))
    fileio.write_json(paths.PREPARED_SOURCES, preprocess.test_splits(raw.name, splits))
    fileio.write_json(paths.DATA_METRICS, preprocess.split_metrics(raw.name, splits))
    sizes = ", ".join(f"{split} {len(labels):,}" for split, (_images, labels) in splits.items())
    print(f"preprocess: {raw.name}: {sizes} -> {paths.PREPARED_DIR}")


if __name__ == "__main__":
    main()
