"""Folders of labelled pictures (data.extra): reading, refusals naming the row, writer splits,
and the preprocess stage scoring them as a source of their own."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from PIL import Image
from sample_data import paper_scan
from test_preprocess import STAGE_SCRIPT, write_raw

from mnist_pipeline import fileio, labelled, paths, prepared
from mnist_pipeline.labelled import LabelledFolderError

sys.path.insert(0, str(STAGE_SCRIPT.parent))
import preprocess as preprocess_stage  # noqa: E402 (stages/preprocess.py)

sys.path.remove(str(STAGE_SCRIPT.parent))


def make_folder(folder, sample_digits, count=12, writers=6, header="file,label,writer,time"):
    """``count`` real digits as dark-on-paper PNG scans, ``writers`` writers taking turns."""
    images, labels = sample_digits
    folder.mkdir(parents=True)
    rows = [header]
    for number in range(count):
        index = number * 397 % len(labels)
        name = f"{number:04d}.png"
        Image.fromarray(paper_scan(images[index]).astype(np.uint8)).save(folder / name)
        rows.append(f"{name},{labels[index]},w{number % writers},2026-12-06T10:00:00Z")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return [int(labels[number * 397 % len(labels)]) for number in range(count)]


def test_a_folder_reads_as_mnist_style_digits_with_labels_and_writers(tmp_path, sample_digits):
    expected = make_folder(tmp_path / "scans", sample_digits)
    read = labelled.read_folder(tmp_path / "scans")
    assert read.images.shape == (12, 28, 28) and read.images.dtype == np.uint8
    assert read.labels.tolist() == expected
    assert read.writers[:2] == ("scans/w0", "scans/w1")
    assert read.images[:, :2].sum() == 0  # MNIST-style: light digit, empty frame


def test_without_a_writer_column_each_picture_is_its_own_writer(tmp_path, sample_digits):
    make_folder(tmp_path / "hand", sample_digits, count=3, header="file,label")
    rows = (tmp_path / "hand" / "labels.csv").read_text().splitlines()
    (tmp_path / "hand" / "labels.csv").write_text(
        "\n".join([rows[0]] + [",".join(row.split(",")[:2]) for row in rows[1:]]) + "\n")
    assert labelled.read_folder(tmp_path / "hand").writers == (
        "hand/0000.png", "hand/0001.png", "hand/0002.png")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: (f / "0001.png").unlink(), r"labels.csv: line 3 \(0001.png\): no such file in "),
    (lambda f: _edit_row(f, 3, "0001.png,12,w1,"), r"line 3 \(0001.png\): label '12' is not a "
                                                    r"digit 0-9"),
    (lambda f: _edit_row(f, 2, "0001.png,4,w1,"), r"line 3: 0001.png is named again \(first on "
                                                   r"line 2\)"),
    (lambda f: _edit_row(f, 2, "../secret.png,4,w1,"), r"line 2: file '../secret.png' is not a "
                                                        r"plain file name"),
    (lambda f: (f / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"),
     r"line 4 \(0002.png\): "),
    (lambda f: (f / "0003.png").write_bytes(np.zeros(64, np.uint8).tobytes()),
     r"line 5 \(0003.png\): "),
    (lambda f: _edit_row(f, 3, "0001.png,²,w1,"), r"line 3 \(0001.png\): label '²' is not a "
                                                   r"digit 0-9"),
    (lambda f: _edit_row(f, 4, "0002.png,⑦,w1,"), r"line 4 \(0002.png\): label '⑦'"),
    (lambda f: (f / "labels.csv").unlink(), r"labels.csv: missing"),
    (lambda f: ((f / "labels.csv").unlink(), (f / "labels.csv").mkdir()),
     r"labels.csv: a folder, not a file"),
    (lambda f: (f / "labels.csv").write_bytes(b"file,label\n\xff\xfe,3\n"),
     r"labels.csv: not UTF-8 text"),
    (lambda f: (f / "labels.csv").write_text("name,digit\n"), r"line 1: no file, label column"),
])
def test_a_bad_row_is_one_error_naming_the_folder_the_row_and_the_problem(tmp_path,
                                                                          sample_digits,
                                                                          damage, message):
    folder = tmp_path / "corrections"
    make_folder(folder, sample_digits, count=5)
    damage(folder)
    with pytest.raises(LabelledFolderError) as caught:
        labelled.read_folder(folder)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)
    assert re.search(message, str(caught.value)), caught.value


def test_a_labels_csv_saved_with_a_byte_order_mark_reads_as_without(tmp_path, sample_digits):
    """A spreadsheet saves UTF-8 with a byte-order mark (and CRLF): the first column is still
    'file'."""
    expected = make_folder(tmp_path / "scans", sample_digits, count=4)
    labels = tmp_path / "scans" / "labels.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes().replace(b"\n", b"\r\n"))
    read = labelled.read_folder(tmp_path / "scans")
    assert read.labels.tolist() == expected and read.writers[0] == "scans/w0"


def _edit_row(folder, line, text):
    rows = (folder / "labels.csv").read_text().splitlines()
    rows[line - 1] = text
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def test_writers_stay_in_one_split():
    writers = [f"f/w{n % 10}" for n in range(100)]
    parts = labelled.split_by_writer(writers, test_fraction=0.2, val_fraction=0.1, seed=1)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(100))
    by_split = {name: {writers[i] for i in index} for name, index in parts.items()}
    assert (len(by_split["test"]), len(by_split["val"]), len(by_split["train"])) == (2, 1, 7)
    assert not (by_split["test"] & by_split["train"]) and not (by_split["val"] & by_split["train"])
    # Few writers: one is still held out to test, so that the source is scored.
    few = labelled.split_by_writer(["a", "b", "c"], 0.2, 0.1, seed=1)
    assert len(few["test"]) == 1 and len(few["train"]) == 2


# --- the stage ----------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch, sample_digits):
    images, labels = sample_digits
    keep = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(10)])
    write_raw(tmp_path / paths.RAW_DIR, "mnist-sample", (images[keep], labels[keep]))
    make_folder(tmp_path / paths.EXTRA_DIR / "corrections", sample_digits, count=20, writers=10)
    (tmp_path / "params.yaml").write_text(
        "seed: 42\ndata:\n  extra: [corrections]\n"
        "preprocess:\n  val_fraction: 0.1\n  test_fraction: 0.2\n  extra_test_fraction: 0.2\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_stage_adds_the_folder_and_scores_its_held_out_writers(workspace):
    preprocess_stage.main()
    sources = fileio.read_json(paths.PREPARED_SOURCES)
    assert sources == {"mnist-sample": "test", "extra": "test_extra"}
    sizes = {split: len(prepared.load(split)[1]) for split in ("train", "val", "test_extra")}
    # 10 writers of 2 pictures: 2 writers test, 1 validation, 7 train.
    assert sizes == {"train": 210 + 14, "val": 30 + 2, "test_extra": 4}
    assert fileio.read_json(paths.DATA_METRICS)["test_extra"] == {"size": 4}


def test_a_bad_row_stops_the_stage_in_one_line_and_keeps_the_last_outputs(workspace):
    preprocess_stage.main()
    before = {path: path.read_bytes() for path in sorted(paths.PREPARED_DIR.iterdir())}
    _edit_row(paths.EXTRA_DIR / "corrections", 4, "0002.png,12,w2,")
    with pytest.raises(SystemExit) as caught:
        preprocess_stage.main()
    assert caught.value.code == ("preprocess: data/extra/corrections/labels.csv: line 4 "
                                 "(0002.png): label '12' is not a digit 0-9")
    assert {path: path.read_bytes() for path in sorted(paths.PREPARED_DIR.iterdir())} == before


def test_a_folder_that_is_not_there_is_named(workspace):
    (workspace / "params.yaml").write_text("data:\n  extra: [scans]\n")
    with pytest.raises(SystemExit, match=r"^preprocess: data/extra/scans: not a folder"):
        preprocess_stage.main()
