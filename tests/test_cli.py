"""`mnist-pipeline predict`, run through main(argv) with a small model trained on real digits."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline import idx
from mnist_pipeline.app import cli, predict

HEADER = ["input", "index", "label", "confidence", "uncertain"]


@dataclass(frozen=True)
class Trained:
    """A model file honouring the predict contract, and held-out digits with its answers."""

    model_path: Path
    digits: np.ndarray  # float32 0..255, (N, 28, 28), not trained on
    labels: np.ndarray  # true classes
    predicted: np.ndarray  # the model's classes for `digits` as arrays


@pytest.fixture(scope="session")
def trained(small_model) -> Trained:
    """The shared small model (conftest.small_model) and the first 100 of its held-out digits."""
    return Trained(small_model.path, small_model.digits[:100], small_model.labels[:100],
                   small_model.predicted[:100])


def run_predict(trained: Trained, capsys: pytest.CaptureFixture[str], *arguments: object,
                ) -> tuple[int, list[dict[str, str]], list[str]]:
    """Run `predict --model <trained> ARGUMENTS`; exit status, CSV rows and stderr lines."""
    status = cli.main(["predict", "--model", str(trained.model_path), *map(str, arguments)])
    captured = capsys.readouterr()
    reader = csv.DictReader(io.StringIO(captured.out))
    rows = list(reader)
    if captured.out:
        assert reader.fieldnames == HEADER
    return status, rows, captured.err.splitlines()


def labels_of(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([int(row["label"]) for row in rows])


def save_picture(pixels: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def enlarged(digit: np.ndarray, size: int, canvas: tuple[int, int], at: tuple[int, int],
             background: float, ink: float, seed: int) -> np.ndarray:
    """``digit`` enlarged to ``size`` px at ``at`` (x, y) on a noisy (width, height) canvas."""
    stroke = Image.fromarray(digit.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    picture = np.random.default_rng(seed).normal(background, 4.0, (canvas[1], canvas[0]))
    picture[at[1]:at[1] + size, at[0]:at[0] + size] += (
        (ink - background) * np.asarray(stroke, dtype=np.float32) / 255.0
    )
    return picture


def on_paper(digit: np.ndarray, seed: int) -> np.ndarray:
    """A dark pen digit (gray 30), 150 px, off-center on grayish paper (225), 240x200."""
    return enlarged(digit, 150, (240, 200), (70, 10), background=225, ink=30, seed=seed)


# --- help ----------------------------------------------------------------------------------


def test_installed_command_explains_itself() -> None:
    command = shutil.which("mnist-pipeline", path=str(Path(sys.executable).parent))
    assert command, "console script missing: run `pip install -e .`"
    top = subprocess.run([command, "--help"], capture_output=True, text=True, check=True)
    assert "predict" in top.stdout and "input,index,label,confidence" in top.stdout
    sub = subprocess.run([command, "predict", "--help"], capture_output=True, text=True,
                         check=True)
    for promise in ("PNG or JPEG", "IDX", ".npy", "--invert", "--output", "--model",
                    "input,index,label,confidence", "exit status", "dvc repro",
                    "3  the output cannot be written", "100,000 digits", "40,000,000 pixels"):
        assert promise in sub.stdout


# --- batches -------------------------------------------------------------------------------


def test_idx_raw_gz_and_npy_give_the_models_answers(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    data = idx.encode(trained.digits[:30].astype(np.uint8))
    (tmp_path / "digits-idx3-ubyte").write_bytes(data)
    (tmp_path / "digits-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    np.save(tmp_path / "digits.npy", trained.digits[30:40])  # float32 on 0..255

    status, rows, errors = run_predict(
        trained, capsys, tmp_path / "digits-idx3-ubyte", tmp_path / "digits-idx3-ubyte.gz",
        tmp_path / "digits.npy",
    )
    assert (status, errors) == (0, [])
    assert len(rows) == 70
    assert [row["index"] for row in rows[:3]] == ["0", "1", "2"]
    assert rows[30]["input"] == str(tmp_path / "digits-idx3-ubyte.gz")
    expected = np.concatenate([trained.predicted[:30]] * 2 + [trained.predicted[30:40]])
    np.testing.assert_array_equal(labels_of(rows), expected)
    confidences = [row["confidence"] for row in rows]
    assert all(0 < float(value) <= 1 and len(value.split(".")[1]) == 4 for value in confidences)


# --- pictures ------------------------------------------------------------------------------


def test_mnist_digits_saved_as_png_predict_like_the_arrays(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    for number, digit in enumerate(trained.digits[:20]):
        save_picture(digit, tmp_path / f"digit{number:02d}.png")
    status, rows, errors = run_predict(trained, capsys, tmp_path)  # the directory
    assert (status, errors) == (0, [])
    assert [row["input"] for row in rows] == [
        str(tmp_path / f"digit{number:02d}.png") for number in range(20)
    ]
    assert (labels_of(rows) == trained.predicted[:20]).mean() >= 0.9


def test_dark_digits_on_paper_are_inverted_and_recognized(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    pictures = []
    for number, digit in enumerate(trained.digits[40:50]):
        suffix = "jpg" if number % 3 == 0 else "png"  # a few JPEGs, with their artefacts
        pictures.append(save_picture(on_paper(digit, seed=number), tmp_path / f"{number}.{suffix}"))
    status, rows, errors = run_predict(trained, capsys, *pictures)
    assert (status, errors) == (0, [])
    assert (labels_of(rows) == trained.predicted[40:50]).mean() >= 0.8

    # Forcing the inversion gives the same answers; forbidding it finds no light digit.
    assert run_predict(trained, capsys, "--invert", "always", *pictures)[1] == rows
    status, rows, errors = run_predict(trained, capsys, "--invert", "never", pictures[1])
    assert (status, rows) == (1, [])
    assert errors == [f"mnist-pipeline: error: {pictures[1]}: blank image: no digit found"]


def test_light_digits_on_black_are_recognized(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    pictures = [
        save_picture(enlarged(digit, 80, (160, 120), (10, 30), background=10, ink=240,
                              seed=number), tmp_path / f"{number}.png")
        for number, digit in enumerate(trained.digits[50:60])
    ]
    status, rows, errors = run_predict(trained, capsys, *pictures)
    assert (status, errors) == (0, [])
    assert (labels_of(rows) == trained.predicted[50:60]).mean() >= 0.8


# --- rows and CSV --------------------------------------------------------------------------


def test_rows_and_csv() -> None:
    inputs = [predict.LoadedInput("a.npy", np.zeros((2, 28, 28), np.float32)),
              predict.LoadedInput("b,c.png", np.zeros((1, 28, 28), np.float32))]
    probabilities = np.eye(10, dtype=np.float32)[[3, 7, 1]] * 0.9 + 0.01
    rows = predict.prediction_rows(inputs, probabilities)
    assert [row[:3] for row in rows] == [("a.npy", 0, 3), ("a.npy", 1, 7), ("b,c.png", 0, 1)]
    # blank images: not digits, so uncertain whatever the model says
    assert predict.format_csv(rows).splitlines() == [
        "input,index,label,confidence,uncertain", "a.npy,0,3,0.9100,true",
        "a.npy,1,7,0.9100,true", '"b,c.png",0,1,0.9100,true',
    ]


# --- errors and output ---------------------------------------------------------------------


def test_bad_inputs_are_reported_and_the_rest_predicted(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.npy"
    np.save(good, trained.digits[:3].astype(np.uint8))
    (tmp_path / "notes.txt").write_text("not digits")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 32, 32), dtype=np.uint8))
    save_picture(np.full((40, 40), 255.0), tmp_path / "blank.png")
    (tmp_path / "empty").mkdir()
    bad = ["missing.png", "notes.txt", "broken.png", "wrong.npy", "blank.png", "empty"]

    status, rows, errors = run_predict(trained, capsys, good, *(tmp_path / name for name in bad))
    assert status == 1
    assert len(rows) == 3 and {row["input"] for row in rows} == {str(good)}
    assert len(errors) == len(bad)
    for name in bad:
        assert sum(f"error: {tmp_path / name}: " in line for line in errors) == 1


def test_output_file_is_written_instead_of_stdout(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "digits.npy", trained.digits[:5].astype(np.uint8))
    target = tmp_path / "out" / "predictions.csv"  # its folder made as asked (--parents)
    status, rows, errors = run_predict(trained, capsys, "--parents", "--output", target,
                                       tmp_path / "digits.npy")
    assert (status, rows, errors) == (0, [], [])
    lines = target.read_text().splitlines()
    assert lines[0] == ",".join(HEADER) and len(lines) == 6
    assert [path.name for path in target.parent.iterdir()] == ["predictions.csv"]  # no temp


def test_a_missing_output_folder_is_an_error_unless_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --output path must not scatter folders: exit 3 before any work, one line
    that names the missing folder and the flag; nothing created."""
    model, digits = dummy_model(tmp_path), tmp_path / "digits.npy"
    np.save(digits, np.zeros((1, 28, 28), np.uint8))
    for target in (tmp_path / "ouput" / "predictions.csv",
                   tmp_path / "a" / "b" / "predictions.csv"):
        status = cli.main(["predict", "--model", str(model), "--output", str(target),
                           str(digits)])
        captured = capsys.readouterr()
        assert (status, captured.out) == (cli.EXIT_OUTPUT_ERROR, "")
        assert captured.err == (f"mnist-pipeline: error: {target}: cannot be written (no "
                                f"folder {target.parent}; --parents creates it)\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["digits.npy", "model.keras"]


def test_missing_model_says_how_to_make_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "digits.npy", np.zeros((1, 28, 28), dtype=np.uint8))
    status = cli.main(["predict", "--model", str(tmp_path / "nope.keras"),
                       str(tmp_path / "digits.npy")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert "nope.keras: model file not found" in captured.err and "dvc repro" in captured.err


def test_bad_command_lines_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["predict"], ["predict", "--invert", "maybe", "x.png"], ["train"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_installed_command_predicts_with_clean_stderr(
    tmp_path: Path, trained: Trained
) -> None:
    """One real process: TensorFlow's start-up chatter must not reach stderr."""
    picture = save_picture(on_paper(trained.digits[60], seed=60), tmp_path / "digit.png")
    command = shutil.which("mnist-pipeline", path=str(Path(sys.executable).parent))
    assert command
    started = time.perf_counter()
    result = subprocess.run(
        [command, "predict", "--model", str(trained.model_path), str(picture),
         str(tmp_path / "missing.png")],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    assert result.returncode == 1
    assert result.stderr == f"mnist-pipeline: error: {tmp_path / 'missing.png'}: no such file\n"
    assert result.stdout.splitlines()[1].startswith(f"{picture},0,")
    print(f"one picture predicted in {seconds:.1f} s (TensorFlow import included)")


# --- outputs that cannot be written ----------------------------------------------------------


def dummy_model(tmp_path: Path) -> Path:
    """A file where the model should be: enough for checks made before it is loaded."""
    path = tmp_path / "model.keras"
    path.write_bytes(b"never loaded")
    return path


def test_output_that_is_a_directory_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    status = cli.main(["predict", "--model", str(dummy_model(tmp_path)), "--output",
                       str(tmp_path / "out"), str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert (status, captured.out) == (3, "")
    # One line, and no word on the input: nothing was read.
    assert captured.err == (
        f"mnist-pipeline: error: {tmp_path / 'out'}: cannot be written (it is a folder)\n"
    )


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block as user `nobody` when the tests run as root, who may write anywhere."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_read_only_folder_is_refused_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    # Not tmp_path: pytest's folders are private to root, and `nobody` must reach this one.
    top = Path(tempfile.mkdtemp())
    try:
        top.chmod(0o755)
        (top / "read-only").mkdir(mode=0o555)
        model, good = dummy_model(top), top / "good.npy"
        np.save(good, np.zeros((1, 28, 28), np.uint8))
        target = top / "read-only" / "new" / "predictions.csv"
        with unprivileged():
            status = cli.main(["predict", "--model", str(model), "--output", str(target),
                               str(good)])
        captured = capsys.readouterr()
        assert (status, captured.out) == (3, "")
        assert captured.err == (f"mnist-pipeline: error: {target}: cannot be written (cannot "
                                f"create files in {top / 'read-only'}: Permission denied)\n")
    finally:
        shutil.rmtree(top)


def test_a_full_disk_gives_one_line_after_the_work(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "digits.npy", trained.digits[:3].astype(np.uint8))
    target = tmp_path / "predictions.csv"
    target.symlink_to("/dev/full")  # writes fail with ENOSPC, as on a full disk
    status, rows, errors = run_predict(trained, capsys, "--output", target,
                                       tmp_path / "digits.npy")
    assert (status, rows) == (3, [])
    assert errors == [f"mnist-pipeline: error: {target}: cannot be written "
                      "(No space left on device)"]
    assert target.is_symlink()  # a device is written to, never replaced


def test_stdout_to_a_full_device_gives_one_line(
    tmp_path: Path, trained: Trained, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    np.save(tmp_path / "digits.npy", trained.digits[:3].astype(np.uint8))
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        status = cli.main(["predict", "--model", str(trained.model_path),
                           str(tmp_path / "digits.npy")])
        full.flush()  # as Python does at exit: what is still buffered must go somewhere quietly
    assert status == 3
    assert capsys.readouterr().err == (
        "mnist-pipeline: error: standard output: cannot be written (No space left on "
        "device)\n"
    )


def test_when_every_input_fails_the_old_csv_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "predictions.csv"
    target.write_text("input,index,label,confidence\nold.png,0,7,0.9900\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    status = cli.main(["predict", "--model", str(dummy_model(tmp_path)), "--output",
                       str(target), str(tmp_path / "broken.png"), str(tmp_path / "missing.npy")])
    captured = capsys.readouterr()
    assert (status, captured.out) == (1, "")
    assert len(captured.err.splitlines()) == 2
    assert target.read_text() == "input,index,label,confidence\nold.png,0,7,0.9900\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "broken.png", "model.keras", "predictions.csv"
    ]


def test_an_output_that_is_an_input_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`predict v.npy --output v.npy` would replace the digits by their CSV: exit 3 at once,
    by whatever path, link or hard link the output names the input, and for a picture's
    name inside an input directory; the inputs untouched, nothing read."""
    model = dummy_model(tmp_path)
    digits = tmp_path / "v.npy"
    np.save(digits, np.zeros((1, 28, 28), np.uint8))
    original = digits.read_bytes()
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "a.png").write_bytes(b"not read")
    (tmp_path / "link.npy").symlink_to(digits)
    os.link(digits, tmp_path / "hard.npy")
    (tmp_path / "sub").mkdir()
    cases = [
        ([digits], digits, f"it is the input {digits}"),
        ([digits], tmp_path / "sub" / ".." / "v.npy", f"it is the input {digits}"),
        ([digits], tmp_path / "link.npy", f"it is the input {digits}"),
        ([tmp_path / "link.npy"], digits, "it is the input"),
        ([digits], tmp_path / "hard.npy", f"it is the input {digits}"),
        ([scans], scans / "a.png", f"it would be read as a picture of the input directory "
                                   f"{scans}"),
        ([scans], scans / "new.PNG", "it would be read as a picture"),
        ([digits], model, f"it is the input {model}"),
    ]
    for inputs, output, reason in cases:
        status = cli.main(["predict", "--model", str(model), "--output", str(output),
                           *map(str, inputs)])
        captured = capsys.readouterr()
        assert (status, captured.out) == (3, ""), (inputs, output)
        assert captured.err.count("\n") == 1 and reason in captured.err, captured.err
        assert captured.err.startswith(f"mnist-pipeline: error: {output}: cannot be written")
    assert digits.read_bytes() == original and (scans / "a.png").read_bytes() == b"not read"
    assert not (scans / "new.PNG").exists()


def test_the_installed_command_refuses_to_overwrite_its_input(
    tmp_path: Path, trained: Trained
) -> None:
    digits = tmp_path / "v.npy"
    np.save(digits, trained.digits[:2])
    original = digits.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "mnist_pipeline.app.cli", "predict", "--model",
         str(trained.model_path), str(digits), "--output", str(digits)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == cli.EXIT_OUTPUT_ERROR, result.stderr
    assert result.stderr.strip().endswith(f"{digits}: cannot be written (it is the input "
                                          f"{digits})")
    assert digits.read_bytes() == original
    # a CSV beside it is fine
    ok = subprocess.run(
        [sys.executable, "-m", "mnist_pipeline.app.cli", "predict", "--model",
         str(trained.model_path), str(digits), "--output", str(tmp_path / "v.csv")],
        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "v.csv").read_text().startswith("input,index,label,confidence")
