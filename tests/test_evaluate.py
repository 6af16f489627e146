"""Smoke runs of the train and evaluate stages' main() on a few hundred real digits."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mnist_pipeline import fileio, inference, paths, uncertainty
from mnist_pipeline.model import to_pixels
from stages import evaluate as evaluate_stage
from stages import finetune as finetune_stage
from stages import train as train_stage

TINY_PARAMS = """\
seed: 3
model: {conv_filters: [8], dense_units: 32}
train: {epochs: 2, batch_size: 32, warmup_epochs: 1, early_stopping_patience: 0}
evaluate: {batch_size: 64}
"""


STAGES = {"train": train_stage, "evaluate": evaluate_stage}


def write_prepared(root: Path, digits, per_class: dict[str, int]) -> None:
    """``per_class[split]`` digits of each class per split, as preprocess writes them."""
    images, labels = digits
    prepared = (images / 255).astype(np.float32)
    rng = np.random.default_rng(0)
    offset = 0
    for split, count in per_class.items():
        chosen = rng.permutation(np.concatenate(
            [np.flatnonzero(labels == digit)[offset:offset + count] for digit in range(10)]))
        offset += count
        fileio.save_npy(root / paths.prepared_images(split), prepared[chosen])
        fileio.save_npy(root / paths.prepared_labels(split), labels[chosen].astype(np.uint8))
    # Each test split is a source of its own (here both are sample digits).
    sources = {"mnist": "test", "drawn": "test_drawn"}
    fileio.write_json(root / paths.PREPARED_SOURCES,
                      {name: split for name, split in sources.items() if split in per_class})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sample_digits):
    """A repo-like folder after train and evaluate ran on 200/50/50 digits, and a second
    test source of 30."""
    root = tmp_path_factory.mktemp("pipeline")
    (root / "params.yaml").write_text(TINY_PARAMS)
    write_prepared(root, sample_digits, {"train": 20, "val": 5, "test": 5, "test_drawn": 3})
    stale = root / paths.TRAINING_PLOTS_DIR / "train" / "stale_metric.tsv"
    stale.parent.mkdir(parents=True)
    stale.write_text("step\tstale_metric\n0\t1\n")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        train_stage.main()
        finetune_stage.main()  # no corrections: models/model.keras is the base model
        evaluate_stage.main()
    return root


def test_train_writes_model_and_dvclive_logs(workspace):
    assert (workspace / paths.MODEL_FILE).is_file()
    assert sorted(p.name for p in (workspace / paths.MODELS_DIR).iterdir()) == [
        "base.keras", "model.keras"]
    assert (workspace / paths.MODEL_FILE).read_bytes() == \
        (workspace / paths.BASE_MODEL_FILE).read_bytes()
    plots = workspace / paths.TRAINING_PLOTS_DIR
    written = sorted(str(p.relative_to(plots)) for p in plots.rglob("*") if p.is_file())
    # exactly what dvc.yaml's top-level plots read; the stale TSV of "an earlier run" is gone
    assert written == ["eval/accuracy.tsv", "eval/loss.tsv", "train/accuracy.tsv",
                       "train/loss.tsv"]
    loss = pd.read_csv(plots / "train" / "loss.tsv", sep="\t")
    assert list(loss.columns) == ["step", "loss"] and list(loss.step) == [0, 1]
    summary = json.loads((workspace / paths.TRAINING_METRICS).read_text())
    # What people compare, so that `dvc metrics show` stays short: no step, no losses.
    assert set(summary) == {"eval", "temperature", "min_confidence"}
    assert set(summary["eval"]) == {"accuracy"}
    assert 0.05 <= summary["temperature"] <= 20  # fitted on the validation split
    # the model's uncertain threshold, fitted there too, and carried by the model file
    assert summary["min_confidence"] in uncertainty.CANDIDATE_THRESHOLDS
    assert inference.load(workspace / paths.BASE_MODEL_FILE).min_confidence == \
        summary["min_confidence"]
    # dvclive must not write its own dvc.yaml, report or params files
    assert not (workspace / "dvc.yaml").exists()
    assert sorted(p.name for p in (workspace / paths.TRAINING_LOG_DIR).iterdir()) == [
        "metrics.json", "plots"]


def test_evaluate_writes_metrics_and_predictions(workspace):
    all_scores = json.loads((workspace / paths.EVALUATE_METRICS).read_text())
    assert set(all_scores) == {"mnist", "drawn"}  # one block per test source
    for source, digits in (("mnist", 50), ("drawn", 30)):
        scores = all_scores[source]
        assert set(scores) == {"accuracy", "errors", "ece"}  # headline only
        assert 0 <= scores["ece"] <= 1
        per_class = pd.read_csv(workspace / paths.per_class_file(source))
        assert list(per_class.columns) == ["digit", "precision", "recall", "f1", "support",
                                           "errors", "false_positives"]
        assert list(per_class.digit) == list(range(10)) and per_class.support.sum() == digits
        assert per_class.errors.sum() == scores["errors"]
        predictions = pd.read_csv(workspace / paths.predictions_file(source))
        assert list(predictions.columns) == ["index", "actual", "predicted", "confidence"]
        assert list(predictions["index"]) == list(range(digits))
        assert scores["errors"] == int((predictions.actual != predictions.predicted).sum())
        assert scores["accuracy"] == pytest.approx(1 - scores["errors"] / digits, abs=1e-6)
        assert predictions.confidence.between(0.1, 1).all()


def test_evaluate_writes_the_reliability_diagram_and_the_robustness_curve(workspace):
    from mnist_pipeline.robustness import DISTORTIONS, LEVELS

    scores = json.loads((workspace / paths.EVALUATE_METRICS).read_text())["mnist"]
    predictions = pd.read_csv(workspace / paths.predictions_file("mnist"))
    reliability = pd.read_csv(workspace / paths.calibration_file("mnist"))
    assert list(reliability.columns) == ["bin", "confidence", "accuracy", "count"]
    assert reliability["count"].sum() == 50 and reliability["bin"].is_monotonic_increasing
    # the ECE from the CSV: count-weighted gap between accuracy and confidence
    gap = (reliability["count"] * (reliability.accuracy - reliability.confidence).abs()).sum()
    assert scores["ece"] == pytest.approx(gap / 50, abs=1e-5)
    assert reliability.accuracy.mul(reliability["count"]).sum() == pytest.approx(
        (predictions.actual == predictions.predicted).sum())
    curve = pd.read_csv(workspace / paths.ROBUSTNESS_FILE)
    assert list(curve.columns) == ["level", *DISTORTIONS, "mean"]
    assert list(curve.level) == list(range(LEVELS + 1))
    # level 0 is the undistorted test digits (all 50 here: fewer than robustness.DIGITS)
    assert (curve.drop(columns="level").iloc[0] == scores["accuracy"]).all()
    assert curve.drop(columns="level").stack().between(0, 1).all()


def test_saved_model_gives_the_predictions_csv_from_raw_pixels(workspace):
    images = np.load(workspace / paths.prepared_images("test"))
    model = inference.load(workspace / paths.MODEL_FILE)
    # what `mnist-pipeline predict` does: raw 0..255 pixels straight into the saved model
    pixels = np.rint(images * 255).astype(np.uint8).astype(np.float32)
    np.testing.assert_array_equal(pixels, to_pixels(images))
    predicted = model.probabilities(pixels, batch_size=7).argmax(axis=1)
    csv = pd.read_csv(workspace / paths.predictions_file("mnist"))
    np.testing.assert_array_equal(predicted, csv.predicted)


def _bad_workspace(tmp_path, monkeypatch, digits, model_from=None):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(TINY_PARAMS)
    write_prepared(tmp_path, digits, {"train": 2, "val": 1, "test": 1})
    if model_from is not None:
        paths.MODELS_DIR.mkdir()
        paths.MODEL_FILE.write_bytes((model_from / paths.MODEL_FILE).read_bytes())


@pytest.mark.parametrize("stage", ["train", "evaluate"])
@pytest.mark.parametrize("corrupt, message", [
    (lambda split: paths.prepared_images(split).unlink(), "_images.npy: missing"),
    (lambda split: paths.prepared_labels(split).write_bytes(b"junk"), "_labels.npy: not a valid"),
    (lambda split: fileio.save_npy(paths.prepared_images(split), np.zeros((10, 784), np.float32)),
     r"_images.npy: expected images of shape \(N, 28, 28\)"),
    (lambda split: fileio.save_npy(paths.prepared_labels(split), np.full(10, 12, np.uint8)),
     r"_labels.npy: labels outside 0..9"),
    (lambda split: fileio.save_npy(paths.prepared_images(split),
                               np.full((10, 28, 28), np.nan, np.float32)),
     "_images.npy: contains NaN"),
])
def test_bad_prepared_arrays_stop_the_stage_cleanly(tmp_path, monkeypatch, sample_digits,
                                                    workspace, stage,
                                                    corrupt, message):
    _bad_workspace(tmp_path, monkeypatch, sample_digits,
                   model_from=workspace if stage == "evaluate" else None)
    split = "train" if stage == "train" else "test"
    corrupt(split)
    with pytest.raises(SystemExit, match=f"^{stage}: data/prepared/{split}{message}") as exit_:
        STAGES[stage].main()
    assert exit_.value.code != 0
    assert "\n" not in str(exit_.value.code)
    outputs = ((paths.EVALUATE_METRICS, paths.PER_CLASS_DIR, paths.PREDICTIONS_DIR,
                paths.CALIBRATION_DIR, paths.ROBUSTNESS_FILE)
               if stage == "evaluate"
               else (paths.BASE_MODEL_FILE, paths.TRAINING_METRICS))
    assert not any(output.exists() for output in outputs)


def test_evaluate_refuses_a_file_that_is_not_a_keras_model(tmp_path, monkeypatch, sample_digits):
    _bad_workspace(tmp_path, monkeypatch, sample_digits)
    paths.MODELS_DIR.mkdir()
    paths.MODEL_FILE.write_text("a text file, not a model")
    with pytest.raises(SystemExit, match="^evaluate: models/model.keras: not a loadable Keras"):
        evaluate_stage.main()
    assert not paths.EVALUATE_METRICS.exists() and not paths.PREDICTIONS_DIR.exists()
    paths.MODEL_FILE.unlink()
    with pytest.raises(SystemExit, match="^evaluate: models/model.keras: model file not found"):
        evaluate_stage.main()


def test_evaluate_removes_the_charts_of_a_source_no_longer_scored(tmp_path, monkeypatch,
                                                                  sample_digits, workspace):
    _bad_workspace(tmp_path, monkeypatch, sample_digits, model_from=workspace)
    for folder in (paths.PER_CLASS_DIR, paths.PREDICTIONS_DIR, paths.CALIBRATION_DIR):
        folder.mkdir(parents=True)
        (folder / "drawn.csv").write_text("a chart of an earlier run\n")
    evaluate_stage.main()
    assert set(json.loads(paths.EVALUATE_METRICS.read_text())) == {"mnist"}
    for folder in (paths.PER_CLASS_DIR, paths.PREDICTIONS_DIR, paths.CALIBRATION_DIR):
        assert sorted(path.name for path in folder.iterdir()) == ["mnist.csv"]


def test_evaluate_refuses_a_sources_file_without_the_datasets_test_split(tmp_path,
                                                                         monkeypatch,
                                                                         sample_digits):
    _bad_workspace(tmp_path, monkeypatch, sample_digits)
    fileio.write_json(paths.PREPARED_SOURCES, {"drawn": "test_drawn"})
    with pytest.raises(SystemExit, match=r'^evaluate: data/prepared/sources.json: expected '
                                         r'\{source: split\} names with one "test" split'):
        evaluate_stage.main()


def test_train_refuses_a_models_folder_it_cannot_write_before_training(tmp_path, monkeypatch,
                                                                       sample_digits):
    _bad_workspace(tmp_path, monkeypatch, sample_digits)
    paths.MODELS_DIR.write_text("a file where the models folder should be")
    with pytest.raises(SystemExit, match=r"^train: models/base.keras: cannot be written "
                                         r"\(models is a file, not a folder\)$"):
        train_stage.main()
    assert not paths.TRAINING_LOG_DIR.exists()  # stopped before training started


def test_a_full_disk_while_saving_gives_one_line_and_keeps_the_old_model(tmp_path, monkeypatch,
                                                                         sample_digits, workspace):
    import errno

    import keras

    _bad_workspace(tmp_path, monkeypatch, sample_digits, model_from=workspace)
    paths.BASE_MODEL_FILE.write_bytes(paths.MODEL_FILE.read_bytes())
    old_model = paths.BASE_MODEL_FILE.read_bytes()

    def disk_full(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as partial:
            partial.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", disk_full)
    with pytest.raises(SystemExit) as exit_:
        train_stage.main()
    assert str(exit_.value.code) == ("train: models/base.keras: could not be written (No space "
                                     "left on device); an earlier model there is unchanged")
    assert paths.BASE_MODEL_FILE.read_bytes() == old_model
    # no temporary left beside them
    assert sorted(path.name for path in paths.MODELS_DIR.iterdir()) == ["base.keras", "model.keras"]
