"""Folders of labelled pictures (corrections.folders): reading, refusals naming the row, and
the read_corrections stage that splits them by time (tests/test_corrections_round.py has more)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from sample_data import paper_scan

from mnist_pipeline import fileio, labelled, paths, prepared
from mnist_pipeline.labelled import LabelledFolderError
from stages import read_corrections as read_corrections_stage


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


# --- the stage that reads them ----------------------------------------------------------


@pytest.fixture
def workspace(tmp_path, monkeypatch, sample_digits):
    make_folder(tmp_path / paths.EXTRA_DIR / "corrections", sample_digits, count=20, writers=2)
    (tmp_path / "params.yaml").write_text("corrections:\n  folders: [corrections]\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_stage_learns_the_earlier_pictures_and_tests_the_latest(workspace):
    read_corrections_stage.main()
    sizes = {split: len(prepared.load(split, paths.CORRECTIONS_DIR)[1])
             for split in ("train", "test")}
    assert sizes == {"train": 16, "test": 4}  # 2 writers of 10: the latest 2 of each held out
    assert fileio.read_json(paths.CORRECTIONS_METRICS)["held_out"] == 4


def test_a_bad_row_stops_the_stage_in_one_line(workspace):
    _edit_row(paths.EXTRA_DIR / "corrections", 4, "0002.png,12,w2,")
    with pytest.raises(SystemExit) as caught:
        read_corrections_stage.main()
    assert caught.value.code == ("read_corrections: data/extra/corrections/labels.csv: line 4 "
                                 "(0002.png): label '12' is not a digit 0-9")
    assert not paths.CORRECTIONS_DIR.exists()  # the model and the prepared digits untouched


def test_a_folder_that_is_not_there_is_named(workspace):
    (workspace / "params.yaml").write_text("corrections:\n  folders: [scans]\n")
    with pytest.raises(SystemExit, match=r"^read_corrections: data/extra/scans: not a folder"):
        read_corrections_stage.main()
