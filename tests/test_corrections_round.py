"""A round of corrections: split by time (labelled.split_by_time), read without TensorFlow
(the read_corrections stage), learned from the base model (the finetune stage)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline import fileio, labelled, paths, prepared
from mnist_pipeline.preprocess import normalize

PROJECT = Path(__file__).resolve().parents[1]


def test_each_writers_latest_pictures_are_held_out_never_all():
    writers = ["a"] * 10 + ["b"] * 3 + ["c"] * 2 + ["d"]
    times = [f"2026-12-07T10:00:{second:02d}Z" for second in range(16)]
    parts = labelled.split_by_time(writers, times, test_fraction=0.2)
    assert parts["test"].tolist() == [8, 9, 12]  # a: 2 of 10; b: 1 of 3; c and d: none
    assert sorted(parts["train"].tolist() + parts["test"].tolist()) == list(range(16))
    assert labelled.split_by_time(writers, times, 0.0)["test"].tolist() == []
    # 0.99 of 3 would be all of them: one picture is always learned
    assert labelled.split_by_time(["a"] * 3, times[:3], 0.99)["test"].tolist() == [1, 2]


def test_the_order_is_the_time_column_then_the_rows():
    writers = ["a"] * 5
    times = ["2026-12-07T10:00:09Z", "2026-12-07T10:00:01Z", "", "2026-12-07T10:00:01Z",
             "2026-12-07T10:00:05Z"]
    # "" sorts first (no time: the earliest), equal times keep the rows' order
    assert labelled.split_by_time(writers, times, 0.4)["test"].tolist() == [0, 4]
    with pytest.raises(ValueError, match="5 writers but 4 times"):
        labelled.split_by_time(writers, times[:4], 0.2)


def write_folder(folder: Path, digits: np.ndarray, labels: np.ndarray, writers: list[str]
                 ) -> None:
    """A folder as `serve --collect` writes it: pictures and labels.csv in the order they came."""
    folder.mkdir(parents=True)
    rows = ["file,label,writer,time"]
    for index, (digit, label, writer) in enumerate(zip(digits, labels, writers, strict=True)):
        Image.fromarray(digit.astype(np.uint8)).resize((280, 280)).save(folder / f"{index}.png")
        rows.append(f"{index}.png,{label},{writer},2026-12-07T10:{index // 60:02d}:"
                    f"{index % 60:02d}Z")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def test_read_corrections_splits_by_time_and_says_what_it_read(in_tmp_dir, sample_digits,
                                                                capsys):
    from stages import read_corrections

    images, labels = sample_digits
    chosen = np.arange(0, 5000, 250)[:20]  # 20 digits, two of each class
    write_folder(paths.EXTRA_DIR / "mine", images[chosen], labels[chosen],
                 ["w1"] * 10 + ["w2"] * 10)
    Path("params.yaml").write_text("corrections:\n  folders: [mine]\n  test_fraction: 0.2\n")
    read_corrections.main()
    learned = prepared.load("train", paths.CORRECTIONS_DIR)
    held_out = prepared.load("test", paths.CORRECTIONS_DIR)
    assert len(learned[1]) == 16 and len(held_out[1]) == 4
    # each writer's last two (rows 8, 9 and 18, 19) are the test split
    np.testing.assert_array_equal(held_out[1], labels[chosen][[8, 9, 18, 19]])
    assert fileio.read_json(paths.CORRECTIONS_METRICS) == {
        "folders": 1, "writers": 2, "pictures": 20, "learned": 16, "held_out": 4,
        "writers_held_out": 2}
    assert "16 to learn, 4 held out" in capsys.readouterr().out


def test_read_corrections_without_folders_writes_an_empty_round(in_tmp_dir, capsys):
    from stages import read_corrections

    Path("params.yaml").write_text("seed: 1\n")
    read_corrections.main()
    assert sorted(path.name for path in paths.CORRECTIONS_DIR.iterdir()) == ["summary.json"]
    assert fileio.read_json(paths.CORRECTIONS_METRICS)["pictures"] == 0
    assert "the model is the base model" in capsys.readouterr().out


def test_a_bad_folder_is_one_line_naming_the_folder_and_row(in_tmp_dir, sample_digits):
    from stages import read_corrections

    images, labels = sample_digits
    write_folder(paths.EXTRA_DIR / "mine", images[:3], labels[:3], ["w"] * 3)
    csv = paths.EXTRA_DIR / "mine" / "labels.csv"
    csv.write_text(csv.read_text().replace("2.png,", "missing.png,"))
    Path("params.yaml").write_text("corrections:\n  folders: [mine]\n")
    with pytest.raises(SystemExit) as exit_:
        read_corrections.main()
    message = str(exit_.value.code)
    assert message.startswith("read_corrections: data/extra/mine/labels.csv: line 4"), message
    assert "\n" not in message
    assert not paths.CORRECTIONS_DIR.exists()


def test_without_corrections_the_model_is_the_base_copied_without_tensorflow(in_tmp_dir):
    paths.MODELS_DIR.mkdir()
    paths.BASE_MODEL_FILE.write_bytes(b"the base model's bytes")
    paths.CORRECTIONS_DIR.mkdir(parents=True)
    Path("params.yaml").write_text("seed: 1\n")
    script = ("import sys, runpy; runpy.run_path(sys.argv[1], run_name='__main__'); "
              "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script, str(PROJECT / "stages/finetune.py")],
                            capture_output=True, text=True, timeout=120, check=True,
                            env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"})
    assert result.stdout.splitlines()[-1] == "False", result.stdout
    assert paths.MODEL_FILE.read_bytes() == b"the base model's bytes"


@pytest.fixture(scope="module")
def base_workspace(tmp_path_factory, sample_digits) -> Path:
    """A tiny base model (dense, 2 epochs on 2,000 sample digits) and its prepared digits, as
    the train stage leaves them."""
    from mnist_pipeline import training
    from mnist_pipeline.model import build_network, export_model
    from mnist_pipeline.model_file import save_model
    from mnist_pipeline.params import params_from_dict

    root = tmp_path_factory.mktemp("round")
    images, labels = sample_digits
    order = np.random.default_rng(5).permutation(len(labels))
    train, val = order[:2000], order[2000:2400]
    params = params_from_dict({"model": {"architecture": "dense", "dense_units": 64,
                                         "test_time_shifts": 0},
                               "train": {"epochs": 3, "warmup_epochs": 0, "ema_momentum": 0}})
    training.set_determinism(0)
    network = build_network(params.model)
    training.train(network, (normalize(images[train]), labels[train]),
                   (normalize(images[val]), labels[val]), params.train, seed=0, verbose=0)
    save_model(export_model(network, 0), root / paths.BASE_MODEL_FILE)
    for split, index in (("train", train), ("val", val)):
        prepared.save(split, normalize(images[index]), labels[index], root / paths.PREPARED_DIR)
    return root


def test_ten_corrections_of_a_misread_style_teach_it(base_workspace, sample_digits, monkeypatch,
                                                     tmp_path):
    """A writer whose 7s are upside down: the base misreads them; after a round of 10 of
    them, the writer's later upside-down 7s read as 7, and the other digits still read."""
    import shutil

    from mnist_pipeline import inference
    from mnist_pipeline.digit_image import normalize_digit
    from stages import finetune, read_corrections

    shutil.copytree(base_workspace, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    images, labels = sample_digits
    sevens = np.flatnonzero(labels == 7)
    upside_down = images[sevens][:, ::-1, ::-1]
    write_folder(paths.EXTRA_DIR / "mine", upside_down[:10], labels[sevens][:10], ["w"] * 10)
    Path("params.yaml").write_text(
        "model:\n  architecture: dense\n  dense_units: 64\n  test_time_shifts: 0\n"
        "corrections:\n  folders: [mine]\n  learning_rate: 0.001\n  repeats: 30\n"
        "  augmentation: {rotation_degrees: 0, translation_fraction: 0.05, zoom_fraction: 0}\n")
    # as the page's pictures reach the model: drawn at 280 px, made MNIST-style
    later = np.stack([normalize_digit(np.asarray(Image.fromarray(digit).resize((280, 280)),
                                                 np.float32)) for digit in upside_down[300:400]])
    others = images[np.flatnonzero(labels != 7)[::20]].astype(np.float32)
    others_labels = labels[np.flatnonzero(labels != 7)[::20]]

    def read_as_seven(model_file: Path) -> float:
        return float((inference.load(model_file).probabilities(later).argmax(1) == 7).mean())

    def others_right(model_file: Path) -> float:
        answers = inference.load(model_file).probabilities(others).argmax(1)
        return float((answers == others_labels).mean())

    before = read_as_seven(paths.BASE_MODEL_FILE)
    read_corrections.main()
    finetune.main()
    after = read_as_seven(paths.MODEL_FILE)
    print(json.dumps({"upside-down 7s read as 7": [before, after],
                      "other digits": [others_right(paths.BASE_MODEL_FILE),
                                       others_right(paths.MODEL_FILE)]}))
    assert before < 0.2 and after > 0.6, (before, after)
    assert others_right(paths.MODEL_FILE) > others_right(paths.BASE_MODEL_FILE) - 0.03
