"""Scanned digits (mnist_pipeline.scans): reading UCI's optdigits format, and scan-like copies of
training digits, on small data made here (never the shared optdigits file)."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline import scans
from mnist_pipeline.digit_image import normalize_digit

HEADER = """BU handwritten digit database: E Alpaydin C Kaynak 1995
Training file

entwidth = {width}
entheight = {height}
depth = 1
whitepix = 0
ntot = {total}
"""


def optdigits_text(bitmaps: np.ndarray, labels: list[int]) -> str:
    """The optdigits-orig format of ``bitmaps`` (N, H, W) 0/1: header, rows, a label line."""
    total, height, width = bitmaps.shape
    lines = [HEADER.format(width=width, height=height, total=total).rstrip("\n")]
    for bitmap, label in zip(bitmaps, labels, strict=True):
        lines += ["".join(str(int(bit)) for bit in row) for row in bitmap]
        lines.append(f" {label}")
    return "\n".join(lines) + "\n"


def a_bitmap(seed: int, size: int = 8) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size)) < 0.3).astype(np.uint8)


def stroke_digit(kind: str = "one") -> np.ndarray:
    """A 28x28 MNIST-style digit, light on dark uint8: a vertical bar (one) or a ring (zero)."""
    digit = np.zeros((28, 28), dtype=np.uint8)
    if kind == "one":
        digit[4:24, 13:16] = 255
    else:
        rows, columns = np.mgrid[:28, :28]
        radius = np.hypot((rows - 14) / 9.0, (columns - 14) / 6.0)
        digit[(radius > 0.75) & (radius < 1.0)] = 255
    return digit


# --- optdigits ---------------------------------------------------------------------------


def test_parse_reads_bitmaps_and_labels() -> None:
    bitmaps = np.stack([a_bitmap(seed) for seed in range(3)])
    parsed, labels = scans.parse_optdigits(optdigits_text(bitmaps, [7, 0, 9]))
    assert parsed.dtype == np.uint8 and parsed.shape == (3, 8, 8)
    np.testing.assert_array_equal(parsed, bitmaps)
    assert labels.tolist() == [7, 0, 9]


@pytest.mark.parametrize("breaking, message", [
    (lambda text: text.replace("ntot = 2", "ntot = 3"), "lines after the header"),
    (lambda text: text.replace(" 4\n", " x\n"), "expected a label"),
    (lambda text: text.replace("entwidth = 8\n", ""), "entwidth"),
])
def test_parse_refuses_a_broken_file(breaking, message: str) -> None:
    text = optdigits_text(np.stack([a_bitmap(1), a_bitmap(2)]), [3, 4])
    with pytest.raises(scans.OptdigitsError, match=message):
        scans.parse_optdigits(breaking(text))


def test_parse_names_the_line_of_a_bad_row() -> None:
    text = optdigits_text(np.stack([a_bitmap(1)]), [3])
    lines = text.splitlines()
    first_row = next(i for i, line in enumerate(lines) if set(line) <= {"0", "1"} and line)
    lines[first_row + 2] = "0102" + lines[first_row + 2][4:]
    with pytest.raises(scans.OptdigitsError, match=f"line {first_row + 3}:"):
        scans.parse_optdigits("\n".join(lines))


def test_read_checks_the_published_digest(tmp_path) -> None:
    path = tmp_path / "optdigits-orig.tra"
    path.write_text(optdigits_text(np.stack([a_bitmap(5)]), [5]), encoding="ascii")
    with pytest.raises(scans.OptdigitsError, match="not UCI's optdigits-orig.tra"):
        scans.read_optdigits(path)
    bitmaps, labels = scans.read_optdigits(path, verify=False)
    assert bitmaps.shape == (1, 8, 8) and labels.tolist() == [5]
    assert hashlib.sha256(path.read_bytes()).hexdigest() != scans.OPTDIGITS_SHA256


def test_optdigits_pictures_are_black_ink_on_white_and_read_as_predict_does() -> None:
    bitmap = np.zeros((32, 32), dtype=np.uint8)
    bitmap[2:30, 14:19] = 1  # a thick 1 reaching the top and bottom, as NIST's forms are cut
    picture = scans.optdigits_pictures(bitmap[None])[0]
    assert picture.dtype == np.float32
    assert picture[0, 0] == 255.0 and picture[15, 16] == 0.0
    digit = scans.normalize_all([picture])[0]
    np.testing.assert_array_equal(digit, normalize_digit(picture))
    assert digit.shape == (28, 28) and digit[14, 14] > 200 and digit[0, 0] == 0


# --- scan-like digits ----------------------------------------------------------------------


def test_scan_like_is_a_seeded_picture_of_its_own_size() -> None:
    style = scans.ScanStyle(heights=(12, 12), margins=(0, 0), dark_on_light=1.0,
                            binarize_probability=1.0, noise=0.0)
    first = scans.scan_like(stroke_digit(), np.random.default_rng(3), style)
    again = scans.scan_like(stroke_digit(), np.random.default_rng(3), style)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.shape[0] == 12
    assert set(np.unique(first)) <= {0.0, 255.0}  # binarized
    assert (first == 0).any() and first.mean() > 127.5  # dark ink on mostly light paper


def test_scan_like_polarity_margins_and_stretch() -> None:
    light = scans.ScanStyle(heights=(20, 20), margins=(3, 3), dark_on_light=0.0,
                            stretch_probability=0.0, blur_sigma=0.0, noise=0.0,
                            binarize_probability=1.0, stroke_change=(0.0, 0.0))
    scan = scans.scan_like(stroke_digit(), np.random.default_rng(0), light)
    assert scan.shape[0] == 26 and scan[:3].max() == 0 and scan[:, :3].max() == 0
    assert scan.max() == 255.0  # light ink on dark
    assert scan.shape[1] - 6 < 8  # a thin 1 keeps its shape
    stretched = scans.scan_like(stroke_digit(), np.random.default_rng(0),
                                scans.ScanStyle(**{**light.__dict__,
                                                   "stretch_probability": 1.0}))
    assert stretched.shape[1] >= scan.shape[1]


def test_strokes_get_thicker_and_thinner() -> None:
    ink = np.zeros((40, 40), dtype=np.float32)
    ink[5:35, 17:24] = 1.0
    assert scans.change_strokes(ink, 3.0).sum() > ink.sum() * 1.5
    assert 0 < scans.change_strokes(ink, -2.0).sum() < ink.sum() * 0.6
    # thinning that would erase a thin stroke leaves it as it was
    thin = np.zeros((20, 20), dtype=np.float32)
    thin[3:17, 10] = 1.0
    np.testing.assert_array_equal(scans.change_strokes(thin, -2.0), thin)


def test_scan_digits_degrades_a_share_and_reads_them_mnist_style() -> None:
    digits = np.stack([stroke_digit("one"), stroke_digit("zero")] * 20)
    out, changed = scans.scan_digits(digits, 0.5, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == digits.shape
    assert 8 <= changed.sum() <= 32
    np.testing.assert_array_equal(out[~changed], digits[~changed])
    assert not np.array_equal(out[changed], digits[changed])
    # each scan is centred as MNIST is: its mass near the middle, black corners
    for image in out[changed]:
        rows, columns = np.nonzero(image)
        weights = image[rows, columns].astype(float)
        assert abs(np.average(rows, weights=weights) - 14) < 2.5
        assert abs(np.average(columns, weights=weights) - 14) < 2.5
        assert image[0, 0] == 0 and image[-1, -1] == 0
    again, _ = scans.scan_digits(digits, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)


def test_scan_digits_keeps_a_blank_digit_and_refuses_bad_input() -> None:
    digits = np.stack([np.zeros((28, 28), np.uint8), stroke_digit()])
    out, changed = scans.scan_digits(digits, 1.0, np.random.default_rng(0))
    assert changed.tolist() == [False, True]
    np.testing.assert_array_equal(out[0], digits[0])
    with pytest.raises(ValueError, match="share"):
        scans.scan_digits(digits, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        scans.scan_digits(digits.astype(np.float32), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no ink"):
        scans.scan_like(digits[0], np.random.default_rng(0))


def test_scan_style_refuses_bad_ranges() -> None:
    with pytest.raises(ValueError, match="heights"):
        scans.ScanStyle(heights=(20, 10))
    with pytest.raises(ValueError, match="thresholds"):
        scans.ScanStyle(thresholds=(0.0, 0.5))
    with pytest.raises(ValueError, match="binarize_probability"):
        scans.ScanStyle(binarize_probability=2.0)


def test_a_continental_one_gets_a_flag_and_a_foot() -> None:
    one = stroke_digit("one")
    written = scans.continental_one(one, np.random.default_rng(0))
    assert written.dtype == np.uint8 and written.shape == (28, 28)
    assert (written >= one).all() and written.sum() > one.sum()
    assert written[5:12, :13].any()  # the flag, left of the stroke near its top
    blank = np.zeros((28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(scans.continental_one(blank, np.random.default_rng(0)), blank)


def test_scan_digits_writes_continental_ones_only_with_labels() -> None:
    ones = np.stack([stroke_digit("one")] * 8)
    style = scans.ScanStyle(continental_ones=1.0, stretch_probability=0.0, blur_sigma=0.0,
                            noise=0.0, stroke_change=(0.0, 0.0), heights=(28, 28))
    plain, _ = scans.scan_digits(ones, 1.0, np.random.default_rng(0), style)
    written, _ = scans.scan_digits(ones, 1.0, np.random.default_rng(0), style,
                                   np.ones(8, dtype=np.uint8))
    # a flag and a foot make the 1 wider than its plain stroke, once fitted in the box
    def width(image: np.ndarray) -> int:
        return int(np.ptp(np.flatnonzero((image > 64).any(axis=0))))
    assert np.mean([width(image) for image in written]) > np.mean([width(p) for p in plain]) + 3
    zeros, _ = scans.scan_digits(ones, 1.0, np.random.default_rng(0), style,
                                 np.zeros(8, dtype=np.uint8))
    np.testing.assert_array_equal(zeros, plain)


# --- benchmarks/scan_recipes.py, in its smoke mode ---------------------------------------------


def test_scan_recipes_smoke(tmp_path, monkeypatch, capsys) -> None:
    """The benchmark on a tiny untrained base and a made-up optdigits file: it scores the base,
    fine-tunes it with scan-like digits, and prints both rows (measures nothing)."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.setenv("BENCHMARK_RESULTS_DIR", str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    monkeypatch.syspath_prepend(str(benchmarks))
    common = importlib.import_module("common")
    scan_recipes = importlib.import_module("scan_recipes")
    from mnist_pipeline.model import build_network, export_model

    params = common.base_params(common.SMOKE_OVERRIDES)
    network = build_network(params.model)
    base = tmp_path / "base"
    base.mkdir()
    network.save(base / "network.keras")
    export_model(network, 4, 1.0).save(base / "model.keras")
    (base / "base.json").write_text(json.dumps({"temperature": 1.0, "test_time_shifts": 4}))
    digits = np.stack([stroke_digit("one"), stroke_digit("zero")] * 16)
    labels = np.array([1, 0] * 16, dtype=np.uint8)
    np.savez(base / "data.npz", train_images=digits, train_labels=labels,
             mnist_images=digits[:8], mnist_labels=labels[:8],
             drawn_images=digits[8:16], drawn_labels=labels[8:16])
    bitmaps = np.zeros((2, 32, 32), dtype=np.uint8)
    bitmaps[0, 2:30, 14:18] = 1
    bitmaps[1, 4:28, 8:24] = 1
    bitmaps[1, 8:24, 12:20] = 0
    optdigits = tmp_path / "optdigits-orig.tra"
    optdigits.write_text(optdigits_text(bitmaps, [1, 0]), encoding="ascii")
    common_args = ["--smoke", "--base", str(base), "--optdigits", str(optdigits)]
    scan_recipes.main([*common_args, "--label", "today"])
    scan_recipes.main([*common_args, "--label", "tuned", "--epochs", "1", "--share", "0.5",
                       "--schedule", "cosine", "--style", "stretch_probability=0.6",
                       "--style", "stroke_change=[-2,7]"])
    runs = json.loads((tmp_path / "results" / "scan_recipes.json").read_text())
    assert [run["label"] for run in runs] == ["today", "tuned"]
    assert runs[1]["recipe"]["style"]["stroke_change"] == [-2, 7]
    assert {"fixed", "broke"} <= set(runs[1]["optdigits"])
    assert runs[0]["optdigits"]["digits"] == 2 and runs[0]["mnist"]["digits"] == 8
    assert "| tuned | 0 |" in capsys.readouterr().out


def test_add_scan_copies_appends_scanned_copies_with_their_labels() -> None:
    digits = np.stack([stroke_digit("one"), stroke_digit("zero")] * 20)
    labels = np.array([1, 0] * 20, dtype=np.uint8)
    images, out_labels = scans.add_scan_copies(digits, labels, 0.5, seed=3)
    added = len(out_labels) - len(labels)
    assert 8 <= added <= 32 and images.shape == (len(out_labels), 28, 28)
    np.testing.assert_array_equal(images[:40], digits)
    np.testing.assert_array_equal(out_labels[:40], labels)
    for copy, label in zip(images[40:], out_labels[40:], strict=True):
        assert not np.array_equal(copy, stroke_digit("one" if label == 1 else "zero"))
    again = scans.add_scan_copies(digits, labels, 0.5, seed=3)
    np.testing.assert_array_equal(again[0], images)
    none = scans.add_scan_copies(digits, labels, 0.0, seed=3)
    np.testing.assert_array_equal(none[0], digits)
