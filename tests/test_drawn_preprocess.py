"""The preprocess stage with the pen-drawn digits: writer splits, a test split per source,
and a bad pen file refused in one line with the last good outputs kept."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pen_data import pen_text
from sample_data import write_raw

from mnist_pipeline import fileio, paths, prepared
from stages import preprocess as preprocess_stage

TRA, TES = "pendigits-orig.tra", "pendigits-orig.tes"


@pytest.fixture
def workspace(tmp_path, monkeypatch, sample_digits):
    """params.yaml, 300 MNIST digits and pen files of 4 + 2 writers (10 digits each) in
    data/raw, as the download stage writes them with data.drawn."""
    images, labels = sample_digits
    keep = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(10)])
    (tmp_path / "params.yaml").write_text(
        "seed: 42\npreprocess:\n  val_fraction: 0.1\n  test_fraction: 0.2\n"
        "  scan_copies: 0\n  drawn:\n    val_writers: 1\n    copies: 2\n")  # sizes exact
    raw = write_raw(tmp_path / paths.RAW_DIR, "mnist-sample", (images[keep], labels[keep]))
    (raw / TRA).write_text(pen_text(range(1, 5), per_writer=10, seed=0))
    (raw / TES).write_text(pen_text(range(1, 3), per_writer=10, seed=1))
    manifest = fileio.read_json(raw / "manifest.json")
    fileio.write_json(raw / "manifest.json", {**manifest, "drawn": [TES, TRA]})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_both_sources_train_and_validate_and_each_has_its_test_split(workspace, capsys):
    preprocess_stage.main()
    sizes = {split: len(prepared.load(split)[1])
             for split in ("train", "val", "test", "test_drawn")}
    # MNIST: 210 / 30 / 60; pen: 3 writers x 10 digits x 2 copies, 1 writer, 2 test writers.
    assert sizes == {"train": 210 + 60, "val": 30 + 10, "test": 60, "test_drawn": 20}
    assert fileio.read_json(paths.PREPARED_SOURCES) == {"mnist-sample": "test",
                                                       "drawn": "test_drawn"}
    metrics = fileio.read_json(paths.DATA_METRICS)
    assert metrics == {"dataset": "mnist-sample", "train": {"size": 270}, "val": {"size": 40},
                       "test": {"size": 60}, "test_drawn": {"size": 20}}
    images, labels = prepared.load("test_drawn")
    assert set(labels) == set(range(10)) and images.max() == 1.0
    assert "test_drawn 20" in capsys.readouterr().out


def test_without_pen_files_the_dataset_alone_is_prepared(workspace):
    manifest = fileio.read_json(paths.RAW_MANIFEST)
    fileio.write_json(paths.RAW_MANIFEST, {**manifest, "drawn": []})
    preprocess_stage.main()
    assert fileio.read_json(paths.PREPARED_SOURCES) == {"mnist-sample": "test"}
    assert not paths.prepared_images("test_drawn").exists()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda text: text.replace('? "3"', '? "x"', 1),
     f"data/raw/{TRA}: line [0-9]+: unknown label 'x'"),
    (lambda text: text[:len(text) // 2], f"data/raw/{TRA}: line [0-9]+: "),  # truncated
    (lambda text: text.replace(".PEN_DOWN\n", "", 1),
     f"data/raw/{TRA}: line 8: a point outside a stroke"),
    (lambda text: text.replace(".COMMENT 0  1    0\n", "", 1), "digit without a .COMMENT"),
    (lambda text: text.encode("ascii").replace(b" 1", b" \xff", 1),
     f"data/raw/{TRA}: not UNIPEN text"),
    (None, f"data/raw/{TRA}: missing; run `dvc repro download` first"),
])
def test_a_bad_pen_file_is_one_line_and_the_last_outputs_stay(workspace, damage, message):
    preprocess_stage.main()
    outputs = sorted(Path("data/prepared").iterdir()) + [paths.DATA_METRICS]
    before = [path.read_bytes() for path in outputs]
    pen_file = paths.RAW_DIR / TRA
    if damage is None:
        pen_file.unlink()
    else:
        damaged = damage(pen_file.read_text())
        if isinstance(damaged, bytes):
            pen_file.write_bytes(damaged)
        else:
            pen_file.write_text(damaged)
    with pytest.raises(SystemExit) as caught:
        preprocess_stage.main()
    error = caught.value.code
    assert isinstance(error, str) and error.startswith("preprocess: ") and "\n" not in error
    assert re.search(message, error), error
    assert [path.read_bytes() for path in outputs] == before
