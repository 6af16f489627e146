"""Pen strokes -> the picture the drawing page would make of them (numpy and Pillow, pure).

The page of ``mnist-pipeline serve`` (``app/static/page.js``) draws on a ``PAD_SIZE`` square
canvas, white on black, with a round-capped, round-joined brush ``BRUSH_WIDTH`` wide and a dot
where the pen goes down; the browser antialiases. :func:`render` draws the same thing: the
union of round-capped segments of the brush's width, drawn ``SUPERSAMPLE`` times larger and
averaged down, which is the coverage that antialiasing approximates. The picture then goes
through ``digit_image.normalize_digit`` like any picture sent to the model, so training sees
what serving sees (tests/test_drawn_page.py draws the same strokes on the real page in
Chromium and compares).

:func:`place_on_pad` maps a digit's tablet strokes (y up) onto the pad (y down) at a chosen
size, slant, aspect and rotation: how big and how slanted people draw on the page varies, and
a small digit drawn with the same brush has relatively thicker strokes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# The page's canvas side and brush, in canvas pixels (index.html, page.js; a test holds them
# equal).
PAD_SIZE = 280
BRUSH_WIDTH = 18
# Drawn at this many times the size and averaged down: antialiased edges, as the browser's.
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Placement:
    """Where and how a digit lands on the pad.

    ``height``: pixels between the top and bottom of the strokes' centre lines (the digit's
    size on the pad); ``slant``: horizontal shear (x += slant * height above the centre, so
    positive leans right); ``aspect``: width multiplier; ``rotation_degrees``: clockwise;
    ``wobble``: a smooth bend of the strokes, each point moved by up to this share of the
    digit's size along a wave across the digit (as one hand draws a loop rounder or a stem
    more bent than another), whose frequencies and phases ``wobble_seed`` draws.
    """

    height: float
    slant: float = 0.0
    aspect: float = 1.0
    rotation_degrees: float = 0.0
    wobble: float = 0.0
    wobble_seed: int = 0


def place_on_pad(strokes: Sequence[np.ndarray], placement: Placement,
                 pad_size: int = PAD_SIZE, brush_width: float = BRUSH_WIDTH) -> list[np.ndarray]:
    """Tablet strokes ((n, 2) x, y with y up) -> pad strokes ((n, 2) x, y in pixels, y down).

    The digit is flipped to y down, slanted, stretched and rotated about its centre, scaled
    so that its height is ``placement.height`` (less, where its width would then leave the
    pad), and centred. A digit with no extent at all (one point) becomes a dot in the middle.
    """
    points = np.concatenate([np.asarray(stroke, dtype=np.float64) for stroke in strokes])
    low, high = points.min(axis=0), points.max(axis=0)
    centre, size = (low + high) / 2, float(max(high - low))
    angle = math.radians(placement.rotation_degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    waves = np.random.default_rng(placement.wobble_seed).uniform((0.5, 0.5, 0, 0),
                                                                  (1.5, 1.5, 1, 1))

    def bend(stroke: np.ndarray) -> np.ndarray:
        if not placement.wobble or size == 0:
            return stroke
        across = (stroke - low) / size  # 0..1 over the digit
        amplitude = placement.wobble * size
        shift_x = amplitude * np.sin(2 * np.pi * (waves[0] * across[:, 1] + waves[2]))
        shift_y = amplitude * np.sin(2 * np.pi * (waves[1] * across[:, 0] + waves[3]))
        return stroke + np.stack([shift_x, shift_y], axis=1)

    def transform(stroke: np.ndarray) -> np.ndarray:
        x, y = (bend(np.asarray(stroke, dtype=np.float64)) - centre).T
        y = -y  # tablet y points up, the pad's down
        x = (x - placement.slant * y) * placement.aspect  # shear: the top (y < 0) goes right
        return np.stack([x * cos - y * sin, x * sin + y * cos], axis=1)

    moved = [transform(stroke) for stroke in strokes]
    everything = np.concatenate(moved)
    extent = everything.max(axis=0) - everything.min(axis=0)
    room = pad_size - brush_width - 2  # the brush's round ends stay on the pad
    scales = [placement.height / extent[1] if extent[1] > 0 else math.inf,
              room / extent[0] if extent[0] > 0 else math.inf,
              room / extent[1] if extent[1] > 0 else math.inf]
    scale = min(scales)
    if not math.isfinite(scale):
        scale = 0.0
    middle = (everything.min(axis=0) + everything.max(axis=0)) / 2
    return [(stroke - middle) * scale + pad_size / 2 for stroke in moved]


def render(pad_strokes: Sequence[np.ndarray], pad_size: int = PAD_SIZE,
           brush_width: float = BRUSH_WIDTH, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Pad strokes ((n, 2) pixel x, y) -> the pad's picture, uint8 (pad_size, pad_size).

    White on black: every segment a line ``brush_width`` wide with round caps and joins
    (a disc of the brush's width at every point, the pen-down dot included).
    """
    size = pad_size * supersample
    picture = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(picture)
    width = brush_width * supersample
    radius = width / 2
    for stroke in pad_strokes:
        # Pixel (i, j) covers [i, i+1): its centre is i + 0.5, as in the browser's canvas.
        points = [(float(x) * supersample - 0.5, float(y) * supersample - 0.5)
                  for x, y in np.asarray(stroke, dtype=np.float64)]
        if len(points) > 1:
            draw.line(points, fill=255, width=round(width))
        # Pillow's ellipse covers its bounding box's last row and column too: half a pixel
        # in on each side gives a disc of the brush's width.
        inner = radius - 0.5
        for x, y in points:
            draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=255)
    return np.asarray(picture.reduce(supersample), dtype=np.uint8)
