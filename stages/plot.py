"""Plot stage: draw the digit galleries DVC's plot templates cannot draw, as PNGs.

The training curves, confusion matrices and per-digit bars are dvc.yaml's plots of the train
and evaluate stages' files; this stage draws only pictures of digits.
Reads  data/prepared/sources.json ({source: test split}) and each source's
       <split>_{images,labels}.npy (preprocess stage): the dataset's test digits (split
       "test", the first source), the pen-drawn digits' (test_drawn), any other's,
       plots/predictions/<source>.csv (evaluate stage), one per source,
       params.yaml: seed, plot.
Writes plots/images/misclassified/<source>.png (each source's most confidently wrong test
       digits) and plots/images/sample_predictions.png (a seeded grid of the dataset's test
       digits with their predictions), and removes any other PNG there.
On bad params or inputs it prints one line naming the problem, writes nothing and exits 1.
"""

import sys

from mnist_pipeline import paths, plotting, prepared
from mnist_pipeline.params import load_params


def main() -> None:
    # Everything that can fail on bad input happens before the first write.
    try:
        params = load_params()
        tests = {source: (plotting.read_predictions(paths.predictions_file(source)),
                          *prepared.load(split))
                 for source, split in prepared.read_sources().items()}
        figures = plotting.make_figures(
            tests,
            gallery_size=params.plot.gallery_size,
            sample_grid_size=params.plot.sample_grid_size,
            figure_dpi=params.plot.figure_dpi,
            seed=params.seed,
        )
    except (OSError, ValueError) as error:  # ParamsError, pandas' parser errors included
        sys.exit(f"plot: {error}")
    for path in plotting.save_figures(figures, paths.PLOT_IMAGES_DIR):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
