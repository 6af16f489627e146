"""Pen-drawn digits: reading UNIPEN, drawing strokes as the page does, splitting by writer."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from pen_data import pen_text, strokes_of, unipen

from mnist_pipeline import drawn, pendigits, strokes
from mnist_pipeline.params import DrawnParams
from mnist_pipeline.pendigits import PenFileError

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "mnist_pipeline" / "app" / "static"

# The first digit of UCI's pendigits-orig.tra, as the file writes it (shortened).
UCI_EXCERPT = """.INCLUDE        dene.doc

.LEXICON "0" "1" "2" "3" "4" "5" "6" "7" "8" "9"
.HIERARCHY      DIGIT

.SEGMENT DIGIT    0 ? "8"
.COMMENT 8 12  224
.PEN_DOWN
 267  333
 267  336
 233  327
.PEN_UP
.DT 100

.SEGMENT DIGIT    1 ? "2"
.COMMENT 2 26   54
.PEN_DOWN
 100  200
.PEN_UP
.DT 100
.PEN_DOWN
 110  210
 120  230
.PEN_UP
"""


def test_uci_text_is_read_with_labels_writers_and_strokes():
    digits = pendigits.parse(UCI_EXCERPT, "excerpt", "tra")
    assert [(d.label, d.writer, len(d.strokes)) for d in digits] == [(8, "tra-12", 1),
                                                                     (2, "tra-26", 2)]
    first = digits[0].strokes[0]
    assert first.dtype == np.float32 and first.tolist() == [[267, 333], [267, 336], [233, 327]]
    assert digits[1].strokes[0].shape == (1, 2)  # a one-point stroke: a dot


def test_a_generated_file_reads_back_whole():
    digits = pendigits.parse(pen_text(range(1, 4), per_writer=20, seed=0), "made", "tes")
    assert len(digits) == 60
    assert {d.writer for d in digits} == {"tes-1", "tes-2", "tes-3"}
    assert [d.label for d in digits[:12]] == [*range(10), 0, 1]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace('"2"', '"x"'), r"excerpt: line 15: unknown label 'x' \(expected one "
                                        r"digit 0-9\)"),
    (lambda t: t.replace('"2"', '"12"'), r"line 15: unknown label '12'"),
    (lambda t: t.replace(".COMMENT 2 26   54\n", ""), r"line 15: digit without a .COMMENT"),
    (lambda t: t.replace(" 100  200\n", ""), r"line 18: a stroke without points"),
    (lambda t: t.replace(".COMMENT 2 26   54\n.PEN_DOWN\n 100  200\n.PEN_UP\n.DT 100\n"
                         ".PEN_DOWN\n 110  210\n 120  230\n.PEN_UP\n", ".COMMENT 2 26   54\n"),
     r"line 15: digit 2 has no stroke"),
    (lambda t: t.replace(" 267  336\n", " 267  3x6\n"), r"line 10: expected 'x y', got "),
    (lambda t: t.replace(".PEN_UP\n.DT 100\n\n.SEGMENT", ".DT 100\n\n.SEGMENT", 1),
     r"line 14: a stroke is not closed by .PEN_UP"),
    (lambda t: t.replace(".PEN_DOWN\n 267", " 1 2\n.PEN_DOWN\n 267", 1),
     r"line 8: a point outside a stroke"),
    (lambda t: "just some text\n", r"line 1: expected 'x y'"),
    (lambda t: ".INCLUDE x\n", r"excerpt: no digit in it"),
])
def test_a_bad_file_is_refused_naming_the_line_and_the_problem(edit, message):
    with pytest.raises(PenFileError, match=message):
        pendigits.parse(edit(UCI_EXCERPT), "excerpt", "tra")


@pytest.mark.parametrize(("coordinate", "shown"), [
    ("9" * 400, "999999999999... (400 characters)"),  # float() reads it as infinity
    ("-" + "1" * 39, "-11111111111... (40 characters)"),  # beyond float32: inf once cast
    ("16777217", "16777217"),  # one past what float32 holds exactly
])
def test_a_hand_edited_coordinate_out_of_range_is_refused_with_file_and_line(coordinate, shown):
    edited = UCI_EXCERPT.replace(" 267  336\n", f" 267  {coordinate}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way
        with pytest.raises(PenFileError) as caught:
            pendigits.parse(edited, "pendigits-orig.tra", "tra")
    assert str(caught.value) == (f"pendigits-orig.tra: line 10: coordinate {shown} out of "
                                 "range (tablet units are at most 16,777,216 either way)")
    # The largest allowed coordinate is read as it is written.
    near = pendigits.parse(UCI_EXCERPT.replace(" 267  336\n", " 267  -16777216\n"), "x", "t")
    assert near[0].strokes[0][1].tolist() == [267.0, -16777216.0]


def test_a_writer_in_two_splits_is_refused():
    pendigits.check_writers_apart({"train": ["tra-1", "tra-2"], "test": ["tes-1"]})
    with pytest.raises(PenFileError, match="writer tra-2 is in both the train and the val "
                                           "split"):
        pendigits.check_writers_apart({"train": ["tra-1", "tra-2"], "val": ["tra-2"]})


# --- drawing ------------------------------------------------------------------------------


def test_the_renderer_uses_the_pages_pad_and_brush():
    """One pair of constants for the page and the pipeline: the canvas in index.html and
    the brush in page.js must be the renderer's."""
    page = (STATIC / "page.js").read_text()
    html = (STATIC / "index.html").read_text()
    assert re.search(r"const STROKE_WIDTH = (\d+);", page).group(1) == str(strokes.BRUSH_WIDTH)
    assert re.search(r'lineCap = "round"', page) and re.search(r'lineJoin = "round"', page)
    pad = re.search(r'<canvas id="pad" width="(\d+)" height="(\d+)"', html)
    assert pad.groups() == (str(strokes.PAD_SIZE), str(strokes.PAD_SIZE))


def test_a_stroke_is_drawn_white_on_black_with_the_brush_width_and_round_ends():
    # Canvas coordinates: pixel i spans [i, i + 1), so a line at y = 140.5, 18 wide, covers
    # rows 132..148 whole and half of rows 131 and 149.
    line = [np.array([[100.0, 140.5], [180.0, 140.5]])]
    pad = strokes.render(line)
    assert pad.shape == (280, 280) and pad.dtype == np.uint8
    assert pad[0, 0] == 0 and pad[140, 140] == 255
    column = pad[:, 140].astype(float) / 255
    assert column.sum() == pytest.approx(strokes.BRUSH_WIDTH, abs=0.5)  # antialiased coverage
    assert 100 < pad[131, 140] < 155 and 100 < pad[149, 140] < 155 and pad[130, 140] == 0
    # Round caps: the ends reach half a brush beyond the end points, on the line only.
    assert pad[140, 100 - 8] > 200 and pad[140, 100 - 10] == 0 and pad[140, 180 + 9] == 0
    assert pad[140 - 8, 100 - 8] == 0  # a square cap would cover this corner


def test_one_point_is_a_dot_and_the_tablet_y_axis_is_flipped():
    dot = strokes.render(strokes.place_on_pad([np.array([[10.0, 10.0]])], strokes.Placement(150)))
    lit = np.argwhere(dot > 127)
    assert lit.min(axis=0).tolist() == [131, 131] and lit.max(axis=0).tolist() == [148, 148]
    # A stroke drawn upwards on the tablet ends at the top of the pad.
    upwards = strokes.place_on_pad([np.array([[0.0, 0.0], [0.0, 100.0]])],
                                   strokes.Placement(height=150))
    (start, end), = upwards
    assert start[1] > end[1] and start[1] - end[1] == pytest.approx(150)


def test_placement_scales_slants_and_keeps_the_digit_on_the_pad():
    seven = strokes_of(7, np.random.default_rng(0))
    small = np.concatenate(strokes.place_on_pad(seven, strokes.Placement(height=90)))
    assert np.ptp(small[:, 1]) == pytest.approx(90)
    assert small.mean(axis=0) == pytest.approx([140, 140], abs=25)
    huge = np.concatenate(strokes.place_on_pad(seven, strokes.Placement(height=250, aspect=3)))
    assert huge.min() >= strokes.BRUSH_WIDTH / 2 and huge.max() <= 280 - strokes.BRUSH_WIDTH / 2
    upright = np.concatenate(strokes.place_on_pad([np.array([[0.0, 0.0], [0.0, 100.0]])],
                                                  strokes.Placement(100, slant=0.5)))
    assert upright[1, 0] > upright[0, 0]  # the top leans right


def test_a_drawn_digit_becomes_an_mnist_style_picture():
    four = strokes_of(4, np.random.default_rng(1))
    picture = drawn.to_digit_image(pendigits.PenDigit(4, "tra-1", tuple(four)),
                                   strokes.Placement(160))
    assert picture.shape == (28, 28) and picture.dtype == np.uint8 and picture.max() == 255
    lit = np.argwhere(picture > 0)
    assert max(np.ptp(lit, axis=0)) + 1 <= 22  # fitted into the 20x20 box, antialiased edge
    assert picture[:3].sum() == 0 and picture[-3:].sum() == 0  # MNIST's empty frame


# --- splitting by writer ------------------------------------------------------------------


def _digits(prefix: str, writers: range, per_writer: int, seed: int):
    return pendigits.parse(pen_text(writers, per_writer, seed), prefix, prefix)


def test_writers_stay_in_one_split_and_training_digits_are_drawn_in_copies():
    train_digits, test_digits = _digits("tra", range(1, 7), 10, 0), _digits("tes", range(1, 3),
                                                                            10, 1)
    params = DrawnParams(val_writers=2, copies=3)
    splits = drawn.drawn_splits(train_digits, test_digits, params, seed=5)
    assert {name: len(labels) for name, (_, labels) in splits.items()} == {
        "train": 4 * 10 * 3, "val": 2 * 10, "test": 2 * 10}
    for images, labels in splits.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert labels.dtype == np.uint8 and set(labels) == set(range(10))
    again = drawn.drawn_splits(train_digits, test_digits, params, seed=5)
    assert all(np.array_equal(splits[k][0], again[k][0]) for k in splits)  # seeded
    # The three copies of a digit are three different pictures (size, slant, rotation).
    first_three = splits["train"][0][:3]
    assert not np.array_equal(first_three[0], first_three[1])


def test_drawing_progress_is_a_few_plain_lines_in_a_log(capsys):
    digits = _digits("tes", range(1, 3), 10, 1)
    images, labels = drawn.render_all(digits, drawn.evaluation_placements(
        len(digits), np.random.default_rng(0)), progress="drawing the pen digits (test)")
    assert images.shape == (20, 28, 28) and len(labels) == 20
    log = capsys.readouterr().err  # not a terminal: no tqdm bar redrawn with \r
    assert "\r" not in log and "it/s" not in log
    lines = log.splitlines()
    assert lines[:3] == [f"drawing the pen digits (test): {share}% of 20 digits"
                         for share in (25, 50, 75)]
    assert re.fullmatch(r"drawing the pen digits \(test\): 20 digits in [\d.]+ s", lines[3])
    drawn.render_all(digits[:2], [strokes.Placement(160)] * 2)  # no label: nothing shown
    assert capsys.readouterr().err == ""


def test_the_validation_writers_are_drawn_by_the_seed():
    writers = [f"tra-{n}" for n in range(1, 31)]
    chosen = drawn.pick_val_writers(writers, 3, seed=42)
    assert len(chosen) == 3 and chosen == drawn.pick_val_writers(writers, 3, seed=42)
    assert chosen != drawn.pick_val_writers(writers, 3, seed=43)
    with pytest.raises(ValueError, match="3 of 3 training writers would leave none"):
        drawn.pick_val_writers(writers[:3], 3, seed=1)


def test_unipen_helper_writes_what_the_reader_reads():
    text = unipen([(3, 7, [np.array([[1, 2], [3, 4]])])])
    (digit,) = pendigits.parse(text, "one", "tra")
    assert (digit.label, digit.writer) == (3, "tra-7")


def test_wobble_bends_strokes_smoothly_by_at_most_its_share_of_the_digit():
    seven = strokes_of(7, np.random.default_rng(2))
    straight = strokes.place_on_pad(seven, strokes.Placement(200))
    again = strokes.place_on_pad(seven, strokes.Placement(200, wobble=0.0, wobble_seed=9))
    assert all(np.array_equal(a, b) for a, b in zip(straight, again, strict=True))
    bent = strokes.place_on_pad(seven, strokes.Placement(200, wobble=0.05, wobble_seed=9))
    moved = np.concatenate(bent) - np.concatenate(straight)
    assert 0 < np.abs(moved).max() <= 0.05 * 2 * 200 + 1e-9  # rescaled to the same height
    assert bent[0].tolist() == strokes.place_on_pad(
        seven, strokes.Placement(200, wobble=0.05, wobble_seed=9))[0].tolist()  # seeded
