"""Turn a picture of one handwritten digit into an MNIST-style 28x28 image.

A photo or scan of a dark digit on light paper, or a light digit on a dark background, of any
size, becomes what MNIST's digits are: light on black, cropped to the digit, scaled into a
20x20 box and placed by its center of mass in a 28x28 field. Pure image processing (numpy,
Pillow, scipy), no file names and no Keras: ``mnist-pipeline predict`` uses it for picture
files, and a server can use it for uploaded bytes.

- :func:`picture_to_digit`: a picture (path, bytes, binary stream or PIL image) -> (28, 28);
- :func:`read_picture`: the same source -> grayscale (H, W), no digit processing yet;
- :func:`normalize_digit`: grayscale (H, W) -> (28, 28).

Every result is float32 pixel values 0..255, light digit on dark, as the model takes them.
Anything that cannot be read, or holds no digit, raises :class:`PictureError`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from mnist_pipeline.prepared import IMAGE_SIZE

InvertMode = Literal["auto", "always", "never"]
INVERT_MODES: tuple[str, ...] = ("auto", "always", "never")

# A path, the file's bytes, an open binary stream, or a picture already opened with Pillow.
PictureSource = str | os.PathLike[str] | bytes | BinaryIO | Image.Image

# MNIST geometry (LeCun): each digit was scaled to fit a 20x20 box, keeping its aspect
# ratio, and placed in a 28x28 field so that its center of mass sits in the middle. On the
# 5,000 bundled real digits the center of mass (row, column) averages (13.99, 14.00) in
# array indices, so that is where we put it.
DIGIT_BOX = 20
CENTER_OF_MASS = 14.0

# What is read: PNG and JPEG only (fewer decoders, less to attack). A picture may have this
# many pixels (decoded at full scale; a big JPEG photo is decoded at 1/2..1/8 scale first):
# an A4 page scanned at 600 dpi, or a 40-megapixel photo. Pillow's own limit is 89 million.
PICTURE_FORMATS = ("PNG", "JPEG")
MAX_PICTURE_PIXELS = 40_000_000
# A picture from a stream that cannot seek (a pipe) is held in memory: this much at most.
MAX_PICTURE_BYTES = 128 << 20
_PICTURE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)
# Pillow's modes for 16-bit grayscale (PNG bit depth 16).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})

# Photos are shrunk to this longer side before any work: the digit ends up 20 px tall anyway,
# and a 12-megapixel phone picture would otherwise make the filters below take seconds.
WORKING_MAX_SIDE = 512
# The border ring (this fraction of the shorter side, at least 1 px) tells paper from ink.
BORDER_FRACTION = 0.05
# Less contrast than this (of 255) between the background and the brightest stroke: blank.
MIN_CONTRAST = 32.0
# After stretching the background to 0 and the strokes to 1, a pixel belongs to the digit
# when it is this far above the brightest few border pixels (paper grain, JPEG noise).
INK_MARGIN = 0.25
# Connected blobs smaller than this fraction of the largest one are specks, not strokes.
MIN_BLOB_FRACTION = 0.05
# Anti-aliased stroke edges are fainter than the ink threshold; keep this many pixels
# around the strokes so that the crop (and the 28x28 result) includes them, as MNIST does.
EDGE_PIXELS = 2


class PictureError(ValueError):
    """A picture cannot be read or holds no digit; the message says why (not which file)."""


def picture_to_digit(source: PictureSource, invert: InvertMode = "auto") -> np.ndarray:
    """A picture of one digit -> MNIST-style float32 0..255, shape (28, 28).

    :func:`read_picture`, then :func:`normalize_digit`; raises :class:`PictureError`.
    """
    return normalize_digit(read_picture(source), invert)


def read_picture(
    source: PictureSource,
    max_side: int = WORKING_MAX_SIDE,
    max_pixels: int = MAX_PICTURE_PIXELS,
) -> np.ndarray:
    """A PNG or JPEG picture as grayscale float32 0..255, shape (H, W), longer side <= ``max_side``.

    ``source`` is a path, the file's bytes, a binary stream, or a PIL image. The EXIF
    orientation is applied (phone photos are often stored sideways; a corrupt EXIF block is
    ignored), transparency is composited onto white (a digit drawn on a transparent canvas is
    ink on paper), 16-bit grayscale is scaled by its bit depth, and pictures larger than
    ``max_side`` are shrunk, anti-aliased, to that longer side.

    Bounded before decoding: a picture of more than ``max_pixels`` is refused from its
    header (a JPEG is first decoded at a reduced scale where that brings it under), and a
    stream that cannot seek (a pipe) is read into memory only up to ``MAX_PICTURE_BYTES``.
    Raises :class:`PictureError` for anything else than one PNG or JPEG picture it can decode.
    Pillow's own warnings (decompression bomb, corrupt EXIF) are silenced while reading, by
    ``warnings.catch_warnings``, which is not thread-safe: in a threaded server they may
    leak, never more.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # our pixel limit is lower than Pillow's
        try:
            if isinstance(source, Image.Image):
                picture = decoded(source, max_side, max_pixels)
            else:
                picture = decoded(open_picture(source, stack), max_side, max_pixels)
        except FileNotFoundError:
            raise PictureError("no such file") from None
        except Image.DecompressionBombError:  # Pillow's limit: far above ours
            raise PictureError(f"too large: more than {max_pixels:,} pixels (shrink it first)"
                               ) from None
        except (OSError, SyntaxError, ValueError) as error:
            if isinstance(error, PictureError):
                raise
            raise PictureError(f"not a readable image ({error})") from None
    return as_grayscale(picture, max_side)


def picture_format(head: bytes) -> str | None:
    """The picture format that a file's first 12 bytes announce ("PNG", "JPEG", "GIF", ...),
    or None. Only PNG and JPEG are read; the others are named so that errors can say so."""
    for magic, name in _PICTURE_MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


def open_picture(
    source: str | os.PathLike[str] | bytes | BinaryIO, stack: contextlib.ExitStack
) -> Image.Image:
    """``source`` opened by Pillow as PNG or JPEG (not decoded yet), closed with ``stack``.

    Anything else is refused from its first bytes, naming the format where it is a known one.
    """
    if isinstance(source, bytes):
        stream: BinaryIO = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        stream = stack.enter_context(open(source, "rb"))  # noqa: SIM115 - the stack closes it
    else:
        stream = source
    head = stream.read(12)
    kind = picture_format(head)
    if kind not in PICTURE_FORMATS:
        raise PictureError(f"a {kind} picture; only PNG and JPEG are read (save it as PNG)"
                           if kind else "not a readable image (neither PNG nor JPEG)")
    if stream.seekable():
        stream.seek(-len(head), io.SEEK_CUR)
    else:  # a pipe: Pillow needs to seek, and would read all of it into memory anyway
        stream = io.BytesIO(head + read_bounded(stream, MAX_PICTURE_BYTES - len(head)))
    return stack.enter_context(Image.open(stream, formats=PICTURE_FORMATS))


def read_bounded(stream: BinaryIO, limit: int) -> bytes:
    """The rest of ``stream``, or :class:`PictureError` if it holds more than ``limit`` bytes."""
    chunks, total = [], 0
    while chunk := stream.read(min(1 << 20, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise PictureError(f"more than {limit:,} bytes: too large for a picture")
    return b"".join(chunks)


def decoded(
    picture: Image.Image, max_side: int = WORKING_MAX_SIDE, max_pixels: int = MAX_PICTURE_PIXELS
) -> Image.Image:
    """``picture`` (opened, maybe not yet decoded) decoded now, upright by its EXIF.

    A JPEG is decoded at the smallest scale (1/2, 1/4, 1/8) that keeps its longer side at
    least ``max_side``; then a picture of more than ``max_pixels``, or of several frames (an
    animation), is refused before its pixels are decoded. A truncated file fails here.
    """
    frames = getattr(picture, "n_frames", 1)
    if frames > 1:
        raise PictureError(f"an animation of {frames} frames; save the one frame to read as PNG")
    width, height = picture.size
    if picture.format == "JPEG" and max(width, height) > max_side:
        scale = max_side / max(width, height)
        picture.draft(picture.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        width, height = picture.size
    if width * height > max_pixels:
        raise PictureError(f"too large: more than {max_pixels:,} pixels ({width}x{height}; "
                           "shrink it first)")
    picture.load()
    try:
        return ImageOps.exif_transpose(picture)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError):
        return picture.copy()  # a corrupt EXIF block: the picture as stored, not rotated


def as_grayscale(picture: Image.Image, max_side: int) -> np.ndarray:
    """A decoded picture -> grayscale float32 0..255 (H, W), transparency on white, shrunk."""
    if picture.mode in SIXTEEN_BIT_MODES:
        # 16-bit grayscale: scale 0..65535 down, where convert("L") would clip at 255.
        scale = np.float32(255.0 / 65535.0)
        picture = Image.fromarray(np.asarray(picture, dtype=np.float32) * scale)  # mode "F"
    elif picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, picture.convert("RGBA"))
    if picture.mode != "F":
        picture = picture.convert("L")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.float32)


def border_pixels(gray: np.ndarray, fraction: float = BORDER_FRACTION) -> np.ndarray:
    """The pixels of the outer ring of ``gray`` (H, W), ``fraction`` of the shorter side wide."""
    width = max(1, round(fraction * min(gray.shape)))
    inner = np.zeros(gray.shape, dtype=bool)
    inner[width:-width, width:-width] = True
    return gray[~inner]


def should_invert(gray: np.ndarray, mode: InvertMode = "auto") -> bool:
    """Whether ``gray`` (H, W), 0..255, must be inverted to be a light digit on dark.

    ``auto`` inverts when the border is mostly light (the median border pixel is above
    mid-gray): a digit written on paper. MNIST itself is white on black.
    """
    if mode not in INVERT_MODES:
        raise ValueError(f"invert mode {mode!r}: choose one of {', '.join(INVERT_MODES)}")
    if mode != "auto":
        return mode == "always"
    return float(np.median(border_pixels(gray))) > 127.5


def digit_mask(stretched: np.ndarray) -> np.ndarray:
    """Where the digit is in ``stretched`` (H, W), from :func:`stretch_contrast`: a bool mask.

    Ink is what lies clearly above the border's own noise (paper grain, JPEG artefacts);
    blobs much smaller than the largest are specks and dropped; the strokes are then widened
    by ``EDGE_PIXELS`` to take in their faint anti-aliased edges.
    Raises :class:`PictureError` when there is no ink at all (a blank picture).
    """
    noise_level = float(np.percentile(border_pixels(stretched), 99))
    ink = stretched > min(noise_level + INK_MARGIN, 0.75)
    blobs, count = ndimage.label(ink, structure=np.ones((3, 3)))
    if count == 0:
        raise PictureError("blank image: no digit found")
    sizes = np.bincount(blobs.ravel())[1:]
    keep = np.flatnonzero(sizes >= MIN_BLOB_FRACTION * sizes.max()) + 1
    strokes = np.isin(blobs, keep)
    return ndimage.binary_dilation(strokes, structure=np.ones((3, 3)), iterations=EDGE_PIXELS)


def stretch_contrast(gray: np.ndarray) -> np.ndarray:
    """``gray`` (H, W), light digit on dark, 0..255 -> float32 with background 0, strokes 1.

    The background is the median border pixel; the strokes are the brightest pixel after a
    3x3 median filter, so that one hot pixel does not set the scale. Raises
    :class:`PictureError` when the strokes are not ``MIN_CONTRAST`` brighter than the
    background (a blank picture).
    """
    background = float(np.median(border_pixels(gray)))
    strokes = float(ndimage.median_filter(gray, size=3).max())
    if strokes - background < MIN_CONTRAST:
        raise PictureError("blank image: no digit found")
    stretched = (gray - background) / (strokes - background)
    return np.clip(stretched, 0.0, 1.0).astype(np.float32)


def normalize_digit(gray: np.ndarray, invert: InvertMode = "auto") -> np.ndarray:
    """A picture of one digit, grayscale (H, W) 0..255 -> an MNIST-style 28x28 image.

    Steps, as LeCun made MNIST: make it light-on-dark (see :func:`should_invert`), stretch
    the contrast, crop to the digit (:func:`digit_mask`), scale it so that its longer side
    is 20 px keeping the aspect ratio (anti-aliased), and paste it into a black 28x28 field
    with its center of mass in the middle. A 28x28 MNIST digit comes out (nearly) unchanged.
    Returns float32 0..255, shape (28, 28); raises :class:`PictureError` for a blank picture.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 2:
        raise PictureError(f"expected a grayscale picture (H, W), got shape {gray.shape}")
    if should_invert(gray, invert):
        gray = 255.0 - gray
    stretched = stretch_contrast(gray)
    digit_only = np.where(digit_mask(stretched), stretched, 0.0)
    # Crop to what is lit, not to the widened mask, which reaches past the strokes.
    rows = np.flatnonzero(digit_only.any(axis=1))
    columns = np.flatnonzero(digit_only.any(axis=0))
    crop = digit_only[rows[0]:rows[-1] + 1, columns[0]:columns[-1] + 1]
    digit = fit_in_box(crop, DIGIT_BOX)
    return (place_by_center_of_mass(digit, IMAGE_SIZE) * 255.0).astype(np.float32)


def fit_in_box(image: np.ndarray, box: int) -> np.ndarray:
    """Resize ``image`` (H, W), values 0..1, so its longer side is ``box``, keeping its shape.

    Lanczos resampling, anti-aliased when shrinking; the result is clipped to 0..1 and its
    brightest pixel brought back to 1, since shrinking a thin pen stroke leaves it faint.
    """
    height, width = image.shape
    scale = box / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (W, H)
    if size != (width, height):
        picture = Image.fromarray(image.astype(np.float32))  # float32 -> Pillow mode "F"
        resized = picture.resize(size, Image.Resampling.LANCZOS)
        image = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    peak = float(image.max())
    return image / peak if peak > 0 else image


def place_by_center_of_mass(digit: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Paste ``digit`` (h, w <= size) into a black (size, size) field, its mass centered.

    The shift is whole pixels (no resampling blur), and clamped so the digit stays inside.
    """
    height, width = digit.shape
    if height > size or width > size:
        raise ValueError(f"digit of shape {digit.shape} does not fit in {size}x{size}")
    center_row, center_column = ndimage.center_of_mass(digit)
    target = CENTER_OF_MASS * size / IMAGE_SIZE
    top = int(np.clip(round(target - center_row), 0, size - height))
    left = int(np.clip(round(target - center_column), 0, size - width))
    field = np.zeros((size, size), dtype=np.float32)
    field[top:top + height, left:left + width] = digit
    return field
