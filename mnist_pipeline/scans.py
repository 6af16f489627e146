"""Scanned paper digits: UCI's scanned forms (optdigits), and scan-like copies of training digits.

Two things, both pure (numpy, scipy, Pillow; no TensorFlow, no files but the one read here):

- Reading UCI's "Optical Recognition of Handwritten Digits" 32x32 bitmaps (``optdigits-orig``:
  forms filled in by hand, scanned, cut into digits and binarized by NIST's programs; E.
  Alpaydin and C. Kaynak, 1998, CC BY 4.0): :func:`parse_optdigits` (the text format),
  :func:`read_optdigits` (a file, checked against the published digest) and
  :func:`optdigits_pictures` (bitmaps -> black ink on white paper, as a scan is).
- Making a training digit look scanned *at a scan's own size*, before
  :func:`mnist_pipeline.digit_image.normalize_digit` crops, fits and centres it as it does a
  user's scan: :func:`scan_like` (one 28x28 digit -> a grayscale scan of its own size) and
  :func:`scan_digits` (a share of a batch, normalized MNIST-style). Where the degradation
  happens matters: degrading the 28x28 result instead does not look like what ``predict``
  makes of a real scan (DESIGN.md section 6 measured both).

What a scan does to a digit, and what :class:`ScanStyle` draws at random for each one: the
strokes come out thicker or thinner than MNIST's (pen, scanner, binarization), the digit is
sampled at a low resolution (10-32 px tall) and sometimes stretched to fill its box (NIST's
forms programs do that), it is blurred and noisy, and it is often binarized at some
threshold; ink is dark on light paper or light on dark, with a margin of paper or none.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mnist_pipeline.digit_image import PictureError, normalize_digit
from mnist_pipeline.prepared import IMAGE_SIZE

# UCI's training file of scanned forms (30 writers), as published.
OPTDIGITS_SHA256 = "a4eff709680076cae40420343de292b5960fc2b0da439b8a57c3d14124113bda"
OPTDIGITS_BYTES = 2_048_417
OPTDIGITS_COUNT = 1_934
PAPER = 255.0  # what optdigits_pictures makes of paper (white); ink is 0

# Strokes are thickened or thinned at this height of the digit (px), where one pixel is a
# small step of stroke width (an MNIST stroke is about 8 px at 64, a form's about 14).
WORKING_HEIGHT = 64
# A pixel of a training digit at or above this (of 1) is ink when the digit is cropped.
CROP_LEVEL = 0.1


class OptdigitsError(ValueError):
    """An optdigits file is not in the published format, or not the published file."""


@dataclasses.dataclass(frozen=True)
class ScanStyle:
    """The ranges :func:`scan_like` draws from, uniformly, for each digit.

    - ``heights``: the digit's height in the scan, px (low resolution: 10-32);
    - ``stroke_change``: thickening (+) or thinning (-) of the strokes, px at
      ``WORKING_HEIGHT`` (a disk of that radius: +3 makes an MNIST stroke a form's);
    - ``stretch_probability``: how often the digit is stretched towards its square box
      (its width drawn between its own and its height);
    - ``blur_sigma``, ``noise``: a Gaussian blur (px of the scan) and Gaussian noise (of the
      ink's 0..1), each drawn from 0 to the value;
    - ``binarize_probability``, ``thresholds``: how often the scan is binarized, at a
      threshold drawn from the range (of the ink's 0..1);
    - ``margins``: paper added on each side, px, drawn per side;
    - ``dark_on_light``: how often the ink is dark on light paper (else light on dark);
    - ``continental_ones``: how often a 1 (when :func:`scan_digits` is given the labels) is
      first written as on many European forms, with a flag at its top and a foot.
    """

    heights: tuple[int, int] = (10, 32)
    stroke_change: tuple[float, float] = (-2.0, 5.0)
    stretch_probability: float = 0.3
    blur_sigma: float = 0.8
    noise: float = 0.1
    binarize_probability: float = 0.7
    thresholds: tuple[float, float] = (0.25, 0.75)
    margins: tuple[int, int] = (0, 4)
    dark_on_light: float = 0.8
    continental_ones: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.heights
        if not 4 <= low <= high:
            raise ValueError(f"heights must be 4 <= low <= high px, got {self.heights}")
        if self.stroke_change[0] > self.stroke_change[1]:
            raise ValueError(f"stroke_change must be (low, high), got {self.stroke_change}")
        if not 0 <= self.margins[0] <= self.margins[1]:
            raise ValueError(f"margins must be 0 <= low <= high px, got {self.margins}")
        if not 0 < self.thresholds[0] <= self.thresholds[1] < 1:
            raise ValueError(f"thresholds must lie in (0, 1), got {self.thresholds}")
        for name in ("stretch_probability", "binarize_probability", "dark_on_light",
                     "continental_ones"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.blur_sigma < 0 or self.noise < 0:
            raise ValueError("blur_sigma and noise must be >= 0")


# --- optdigits ---------------------------------------------------------------------------


def parse_optdigits(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The text of an optdigits-orig file -> (bitmaps uint8 (N, H, W) 0/1, 1 = ink; labels
    uint8 (N,)).

    The format: a header of ``key = value`` lines (``entwidth``, ``entheight``, ``ntot``
    among them) and free text, then per digit H lines of W characters ``0``/``1`` and a line
    with its label. Raises :class:`OptdigitsError` naming the line that breaks it.
    """
    lines = text.splitlines()
    header: dict[str, str] = {}
    start = None
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped and set(stripped) <= {"0", "1"} and len(stripped) > 1:
            start = number
            break
        key, equals, value = stripped.partition("=")
        if equals:
            header[key.strip()] = value.strip()
    try:
        width, height = int(header["entwidth"]), int(header["entheight"])
        total = int(header["ntot"])
    except (KeyError, ValueError) as error:
        raise OptdigitsError(f"header: no valid entwidth, entheight and ntot ({error})") from None
    if start is None:
        raise OptdigitsError("no bitmap after the header")
    body = [line.strip() for line in lines[start:]]
    while body and not body[-1]:
        body.pop()
    if len(body) != total * (height + 1):
        raise OptdigitsError(f"{len(body)} lines after the header: {total} digits of "
                             f"{height} rows and a label make {total * (height + 1)}")
    bitmaps = np.zeros((total, height, width), dtype=np.uint8)
    labels = np.zeros(total, dtype=np.uint8)
    for digit in range(total):
        first = digit * (height + 1)
        for row in range(height):
            line = body[first + row]
            if len(line) != width or not set(line) <= {"0", "1"}:
                raise OptdigitsError(f"line {start + first + row + 1}: expected {width} "
                                     f"characters 0/1, got {line[:40]!r}")
            bitmaps[digit, row] = np.frombuffer(line.encode("ascii"), dtype=np.uint8) - ord("0")
        label = body[first + height]
        if not (label.isdigit() and int(label) <= 9):
            raise OptdigitsError(f"line {start + first + height + 1}: expected a label 0-9, "
                                 f"got {label[:40]!r}")
        labels[digit] = int(label)
    return bitmaps, labels


def read_optdigits(path: str | Path, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """UCI's ``optdigits-orig.tra`` at ``path`` -> :func:`parse_optdigits`'s arrays.

    With ``verify``, the file must be the published one (size and SHA-256), else
    :class:`OptdigitsError`."""
    content = Path(path).read_bytes()
    if verify and (len(content) != OPTDIGITS_BYTES
                   or hashlib.sha256(content).hexdigest() != OPTDIGITS_SHA256):
        raise OptdigitsError(f"{path}: not UCI's optdigits-orig.tra ({len(content)} bytes, "
                             f"sha256 {hashlib.sha256(content).hexdigest()[:12]}...)")
    return parse_optdigits(content.decode("ascii"))


def optdigits_pictures(bitmaps: np.ndarray) -> np.ndarray:
    """Bitmaps (N, H, W) with 1 = ink -> grayscale pictures float32 0..255, black ink on white
    paper, as a scanner hands them to ``predict``."""
    return (PAPER * (1 - np.asarray(bitmaps, dtype=np.float32))).astype(np.float32)


def normalize_all(pictures) -> np.ndarray:
    """Grayscale pictures (a sequence of (H, W), 0..255) -> float32 (N, 28, 28), each through
    :func:`normalize_digit` as ``predict`` reads a picture (a blank one raises)."""
    return np.stack([normalize_digit(picture) for picture in pictures]) if len(pictures) \
        else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


# --- scan-like training digits -------------------------------------------------------------


def resize(image: np.ndarray, width: int, height: int,
           resample: Image.Resampling = Image.Resampling.BILINEAR) -> np.ndarray:
    """``image`` (H, W) float -> (height, width) float32, resampled by Pillow (mode F)."""
    picture = Image.fromarray(np.asarray(image, dtype=np.float32))
    return np.asarray(picture.resize((width, height), resample), dtype=np.float32)


def disk(radius: int) -> np.ndarray:
    """A round footprint (2r+1, 2r+1) for morphology."""
    span = np.arange(-radius, radius + 1)
    return (span[:, None] ** 2 + span[None, :] ** 2) <= radius ** 2 + 0.5


def change_strokes(ink: np.ndarray, radius: float) -> np.ndarray:
    """Thicken (``radius`` > 0) or thin (< 0) the strokes of ``ink`` (H, W), light on dark,
    0..1, by a disk of about ``abs(radius)`` px (a fractional radius mixes the two nearest).
    Thinning that would erase the digit leaves it as it was."""
    steps = int(np.floor(abs(radius)))
    fraction = abs(radius) - steps
    morphology = ndimage.grey_dilation if radius > 0 else ndimage.grey_erosion

    def by(size: int) -> np.ndarray:
        return morphology(ink, footprint=disk(size)) if size else ink

    changed = (1 - fraction) * by(steps) + fraction * by(steps + 1) if fraction else by(steps)
    return changed if changed.max() >= 0.5 * ink.max() else ink


def continental_one(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 1 (28, 28), light on dark, uint8 -> the same 1 with a flag from its top down to the
    left and (mostly) a foot across its bottom, in strokes as wide as its own: the 1 of many
    European forms, which MNIST and the pen digits hardly hold. A digit without ink is
    returned as it is."""
    from PIL import ImageDraw

    ink = np.asarray(digit) >= CROP_LEVEL * 255
    rows = np.flatnonzero(ink.any(axis=1))
    if not len(rows):
        return np.asarray(digit)
    top, bottom = rows[0], rows[-1]
    height = bottom - top + 1
    width = max(1, round(ink.sum() / height))  # the stroke's own width, about
    top_column = float(np.flatnonzero(ink[top]).mean())
    bottom_column = float(np.flatnonzero(ink[bottom]).mean())
    picture = Image.fromarray(np.asarray(digit, dtype=np.uint8))
    draw = ImageDraw.Draw(picture)
    flag = rng.uniform(0.2, 0.45) * height
    draw.line([(top_column, top), (top_column - flag * rng.uniform(0.6, 1.1), top + flag)],
              fill=255, width=width)
    if rng.random() < 0.7:
        half = rng.uniform(0.2, 0.4) * height
        draw.line([(bottom_column - half, bottom), (bottom_column + half, bottom)], fill=255,
                  width=width)
    return np.asarray(picture, dtype=np.uint8)


def scan_like(digit: np.ndarray, rng: np.random.Generator,
              style: ScanStyle = ScanStyle()) -> np.ndarray:
    """A training digit (28, 28), light on dark, 0..255 -> how a scanner might have seen it:
    grayscale float32 0..255 at its own size (h, w), dark on light or light on dark.

    Cropped to its ink and enlarged to ``WORKING_HEIGHT``; its strokes thickened or thinned;
    sampled down (area average, as a sensor) to a height from ``style.heights``, keeping its
    shape or stretched towards a square; blurred, made noisy, perhaps binarized; given a
    margin of paper and a polarity. Every draw comes from ``rng``. Raises ``ValueError`` for a
    digit without ink.
    """
    ink = np.asarray(digit, dtype=np.float32) / 255.0
    if ink.ndim != 2:
        raise ValueError(f"expected one digit (H, W), got shape {ink.shape}")
    rows, columns = np.flatnonzero((ink >= CROP_LEVEL).any(axis=1)), \
        np.flatnonzero((ink >= CROP_LEVEL).any(axis=0))
    if not len(rows):
        raise ValueError("the digit has no ink to scan")
    crop = ink[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    aspect = crop.shape[1] / crop.shape[0]
    working = np.clip(resize(crop, max(1, round(WORKING_HEIGHT * aspect)), WORKING_HEIGHT,
                             Image.Resampling.BICUBIC), 0.0, 1.0)
    pad = int(np.ceil(max(style.stroke_change[1], 0))) + 1  # room to thicken into
    working = change_strokes(np.pad(working, pad), rng.uniform(*style.stroke_change))

    height = int(rng.integers(style.heights[0], style.heights[1] + 1))
    shape_aspect = working.shape[1] / working.shape[0]
    if rng.random() < style.stretch_probability:
        shape_aspect = rng.uniform(min(shape_aspect, 1.0), max(shape_aspect, 1.0))
    width = max(2, round(height * shape_aspect))
    scan = np.clip(resize(working, width, height, Image.Resampling.BOX), 0.0, 1.0)

    sigma = rng.uniform(0.0, style.blur_sigma)
    if sigma > 0.05:
        scan = ndimage.gaussian_filter(scan, sigma, mode="constant")
    scan = scan / max(float(scan.max()), 1e-6)
    scan = scan + rng.normal(0.0, rng.uniform(0.0, style.noise), scan.shape)
    if rng.random() < style.binarize_probability:
        binary = scan > rng.uniform(*style.thresholds)
        scan = (binary if binary.any() else scan > 0.5 * scan.max()).astype(np.float32)
    scan = np.clip(scan, 0.0, 1.0)
    top, bottom, left, right = rng.integers(style.margins[0], style.margins[1] + 1, size=4)
    scan = np.pad(scan, ((top, bottom), (left, right)))
    if rng.random() < style.dark_on_light:
        scan = 1.0 - scan
    return (255.0 * scan).astype(np.float32)


def scan_digits(images: np.ndarray, share: float, rng: np.random.Generator,
                style: ScanStyle = ScanStyle(),
                labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``images`` (N, 28, 28) uint8, light on dark, with about ``share`` of them
    (drawn from ``rng``) made scan-like (:func:`scan_like`) and read back MNIST-style by
    :func:`normalize_digit`, as ``predict`` reads a scan. Returns (uint8 images, bool mask of
    the ones changed); a digit whose scan comes out blank keeps its own picture. With
    ``labels``, a share ``style.continental_ones`` of the 1s scanned get a flag and a foot
    first (:func:`continental_one`)."""
    if not 0 <= share <= 1:
        raise ValueError(f"share must be in [0, 1], got {share}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 digits (N, H, W), got {images.dtype} {images.shape}")
    out = images.copy()
    chosen = np.flatnonzero(rng.random(len(images)) < share)
    changed = np.zeros(len(images), dtype=bool)
    for index in chosen:
        digit = images[index]
        if labels is not None and labels[index] == 1 and rng.random() < style.continental_ones:
            digit = continental_one(digit, rng)
        try:
            scanned = normalize_digit(scan_like(digit, rng, style))
        except (PictureError, ValueError):
            continue  # a digit without ink, or a scan that lost it: as it was
        out[index] = np.clip(np.rint(scanned), 0, 255).astype(np.uint8)
        changed[index] = True
    return out, changed


# The scan-like copies preprocess adds to the training digits (preprocess.scan_copies):
# thick strokes, often stretched to the box, half of the 1s continental. Measured on three
# writer folds in benchmarks/README.md#scanned-digits.
TRAINING_STYLE = ScanStyle(stroke_change=(-2.0, 9.0), stretch_probability=0.8,
                           continental_ones=0.5)


def add_scan_copies(images: np.ndarray, labels: np.ndarray, share: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``images`` (N, 28, 28) uint8 and their ``labels``, followed by scan-like copies
    (:data:`TRAINING_STYLE`, :func:`scan_digits`) of about ``share`` of them, drawn with
    ``seed``. Copies, not replacements: every digit is also learned as it was written."""
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(rng.random(len(labels)) < share)
    copies, changed = scan_digits(images[chosen], 1.0, rng, TRAINING_STYLE, labels[chosen])
    return (np.concatenate([images, copies[changed]]),
            np.concatenate([labels, labels[chosen][changed]]))
