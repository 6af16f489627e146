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
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
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
# Bytes of memory a decoded pixel costs at most on the way to grayscale (read_picture): what
# Pillow stores (1 for L/P/1, 2 for 16-bit, 4 for the rest: RGB is stored as RGBX), plus the
# grayscale, alpha and white planes of compositing (or the float32 copy of 16-bit pixels).
GRAYSCALE_OVERHEAD_BYTES = 4
# PNG chunks are read 1 MiB at a time when their CRCs are checked.
_PNG_READ_BYTES = 1 << 20

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


class DecodeBudget:
    """Bytes of decoded pixels that the threads of one process may hold at once.

    :func:`read_picture` reserves a picture's cost (:func:`decode_cost`) before decoding it
    and gives it back when the grayscale picture is made, waiting while the budget is spent:
    so N pictures decoded at once cost at most ``max_bytes``, however large each is (one
    costing more than the whole budget waits until it is all free, then runs alone). Small
    pictures pass big ones that wait. Thread-safe; ``waiting``/``in_use`` are for /health.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.max_bytes = max_bytes
        self.in_use = 0
        self.waiting = 0
        self._condition = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        cost = min(max(cost, 0), self.max_bytes)
        with self._condition:
            self.waiting += 1
            try:
                self._condition.wait_for(lambda: self.in_use + cost <= self.max_bytes)
            finally:
                self.waiting -= 1
            self.in_use += cost
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= cost
                self._condition.notify_all()


def picture_to_digit(source: PictureSource, invert: InvertMode = "auto",
                     budget: DecodeBudget | None = None) -> np.ndarray:
    """A picture of one digit -> MNIST-style float32 0..255, shape (28, 28).

    :func:`read_picture` (decoding within ``budget``), then :func:`normalize_digit`; raises
    :class:`PictureError`.
    """
    return normalize_digit(read_picture(source, budget=budget), invert)


def read_picture(
    source: PictureSource,
    max_side: int = WORKING_MAX_SIDE,
    max_pixels: int = MAX_PICTURE_PIXELS,
    budget: DecodeBudget | None = None,
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
    Decoding costs :func:`decode_cost` bytes at most, freed before this returns; with a
    ``budget`` that cost is reserved first (a server decoding many pictures at once). A PNG
    whose chunk checksums (CRC) do not match is refused as corrupt.
    Raises :class:`PictureError` for anything else than one PNG or JPEG picture it can decode.
    Pillow's own warnings (decompression bomb, corrupt EXIF) are silenced while reading, by
    ``warnings.catch_warnings``, which is not thread-safe: in a threaded server they may
    leak, never more.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # our pixel limit is lower than Pillow's
        try:
            owned = not isinstance(source, Image.Image)  # not the caller's to change
            picture = open_picture(source, stack, max_pixels) if owned else source
            check_size(picture, max_side, max_pixels)
            if budget is not None:
                stack.enter_context(budget.reserve(decode_cost(picture)))
            return as_grayscale(decoded(picture, in_place=owned), max_side)
        except FileNotFoundError:
            raise PictureError("no such file") from None
        except Image.DecompressionBombError:  # Pillow's limit: far above ours
            raise PictureError(f"too large: more than {max_pixels:,} pixels (shrink it first)"
                               ) from None
        except (OSError, SyntaxError, ValueError) as error:
            if isinstance(error, PictureError):
                raise
            raise PictureError(f"not a readable image ({error})") from None


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
    source: str | os.PathLike[str] | bytes | BinaryIO, stack: contextlib.ExitStack,
    max_pixels: int = MAX_PICTURE_PIXELS,
) -> Image.Image:
    """``source`` opened by Pillow as PNG or JPEG (not decoded yet), closed with ``stack``.

    Anything else is refused from its first bytes, naming the format where it is a known one;
    a PNG's chunks are checked first (:func:`check_png_chunks`).
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
    if kind == "PNG":
        start = stream.tell()
        check_png_chunks(stream, max_pixels)
        stream.seek(start)
    return stack.enter_context(Image.open(stream, formats=PICTURE_FORMATS))


def check_png_chunks(stream: BinaryIO, max_pixels: int = MAX_PICTURE_PIXELS) -> None:
    """Read a PNG from its signature to its IEND chunk, checking every chunk's CRC.

    Pillow checks the CRCs of the chunks before the image data only; a picture damaged in
    its pixel data (IDAT) would be decoded into garbage without a word. A header (IHDR)
    claiming more than ``max_pixels`` is refused before the rest is read. Reads 1 MiB at a
    time; raises :class:`PictureError` naming the first bad chunk, or a truncated file.
    """
    stream.read(8)  # the signature, already checked
    first = True
    while True:
        header = stream.read(8)
        if len(header) < 8:
            raise PictureError("not a readable image (truncated PNG: no IEND chunk)")
        length, name = struct.unpack(">I4s", header)
        if length > 0x7FFFFFFF:
            raise PictureError("not a readable image (corrupt PNG chunk length)")
        crc = zlib.crc32(name)
        remaining = length
        while remaining:
            data = stream.read(min(remaining, _PNG_READ_BYTES))
            if not data:
                raise PictureError("not a readable image (truncated PNG)")
            crc = zlib.crc32(data, crc)
            remaining -= len(data)
        if first and name == b"IHDR" and length >= 8:
            stream.seek(-length, io.SEEK_CUR)
            refuse_over(*struct.unpack(">II", stream.read(8)), max_pixels)
            stream.seek(length - 8, io.SEEK_CUR)
        first = False
        stored = stream.read(4)
        if len(stored) < 4:
            raise PictureError("not a readable image (truncated PNG)")
        if struct.unpack(">I", stored)[0] != crc:
            kind = name.decode("latin-1") if name.isalpha() else repr(name)
            raise PictureError(f"not a readable image (corrupt PNG: the checksum of chunk "
                               f"{kind} does not match)")
        if name == b"IEND":
            return


def read_bounded(stream: BinaryIO, limit: int) -> bytes:
    """The rest of ``stream``, or :class:`PictureError` if it holds more than ``limit`` bytes."""
    chunks, total = [], 0
    while chunk := stream.read(min(1 << 20, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise PictureError(f"more than {limit:,} bytes: too large for a picture")
    return b"".join(chunks)


def check_size(
    picture: Image.Image, max_side: int = WORKING_MAX_SIDE, max_pixels: int = MAX_PICTURE_PIXELS
) -> None:
    """Refuse ``picture`` (opened, not yet decoded) before its pixels are decoded.

    A JPEG is set to decode at the smallest scale (1/2, 1/4, 1/8) that keeps its longer side
    at least ``max_side``; then a picture of more than ``max_pixels``, or of several frames
    (an animation), is refused.
    """
    frames = getattr(picture, "n_frames", 1)
    if frames > 1:
        raise PictureError(f"an animation of {frames} frames; save the one frame to read as PNG")
    width, height = picture.size
    if picture.format == "JPEG" and max(width, height) > max_side:
        scale = max_side / max(width, height)
        picture.draft(picture.mode, (math.ceil(width * scale), math.ceil(height * scale)))
        width, height = picture.size
    refuse_over(width, height, max_pixels)


def refuse_over(width: int, height: int, max_pixels: int) -> None:
    """Raise :class:`PictureError` for a picture of more than ``max_pixels``."""
    if width * height > max_pixels:
        raise PictureError(f"too large: more than {max_pixels:,} pixels ({width}x{height}; "
                           "shrink it first)")


def decode_cost(picture: Image.Image) -> int:
    """Bytes that decoding ``picture`` (sized by :func:`check_size`) and making it grayscale
    hold at most at once: Pillow's storage of its mode plus the grayscale planes."""
    width, height = picture.size
    stored = 1 if picture.mode in ("1", "L", "P") else 2 if picture.mode in SIXTEEN_BIT_MODES \
        else 4
    return width * height * (stored + GRAYSCALE_OVERHEAD_BYTES)


def decoded(picture: Image.Image, in_place: bool = True) -> Image.Image:
    """``picture`` (opened and sized by :func:`check_size`) decoded now, upright by its EXIF.

    ``in_place``: rotated in place, without a copy of the decoded pixels (else a rotated
    copy, leaving ``picture`` as it was). A truncated file fails here.
    """
    picture.load()
    try:
        if not in_place:
            return ImageOps.exif_transpose(picture)
        ImageOps.exif_transpose(picture, in_place=True)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError):
        # a corrupt EXIF block: the picture as stored, not rotated
        return picture if in_place else picture.copy()
    return picture


def as_grayscale(picture: Image.Image, max_side: int) -> np.ndarray:
    """A decoded picture -> grayscale float32 0..255 (H, W), transparency on white, shrunk.

    Made grayscale before compositing, one byte a pixel (gray, alpha, white: luminance is
    linear, so gray-on-white equals the gray of color-on-white), and the decoded picture is
    let go of as soon as its planes are taken: see :func:`decode_cost`.
    """
    if picture.mode in SIXTEEN_BIT_MODES:
        # 16-bit grayscale: scale 0..65535 down, where convert("L") would clip at 255.
        scale = np.float32(255.0 / 65535.0)
        gray = Image.fromarray(np.asarray(picture, dtype=np.float32) * scale)  # mode "F"
    elif picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        if picture.mode not in ("RGBA", "LA"):
            picture = picture.convert("RGBA")  # palette or a transparent color: to alpha
        gray, alpha = picture.convert("L"), picture.getchannel("A")
        picture.close()
        del picture
        white = Image.new("L", gray.size, 255)
        white.paste(gray, mask=alpha)  # ink over paper, in place
        gray = white
        del alpha
    else:
        gray = picture.convert("L") if picture.mode not in ("L", "F") else picture
    if max(gray.size) > max_side:
        gray.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.float32)


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


def ink_levels(gray: np.ndarray) -> tuple[float, float]:
    """(background, strokes) of ``gray`` (H, W), light digit on dark, 0..255.

    The background is the median border pixel; the strokes are the brightest pixel after a
    3x3 median filter, so that one hot pixel does not set the scale.
    """
    background = float(np.median(border_pixels(gray)))
    return background, float(ndimage.median_filter(gray, size=3).max())


def blank_digits(images: np.ndarray) -> np.ndarray:
    """Which of ``images`` (N, H, W), light digits on dark, 0..255, are blank: their strokes
    are not ``MIN_CONTRAST`` brighter than their background (:func:`ink_levels`), as a blank
    picture is refused. A bool array (N,)."""
    images = np.asarray(images, dtype=np.float32)
    if images.size == 0:
        return np.zeros(len(images), dtype=bool)
    width = max(1, round(BORDER_FRACTION * min(images.shape[1:])))  # as border_pixels
    inner = np.zeros(images.shape[1:], dtype=bool)
    inner[width:-width, width:-width] = True
    background = np.median(images[:, ~inner], axis=1)
    strokes = ndimage.median_filter(images, size=(1, 3, 3)).max(axis=(1, 2))
    return strokes - background < MIN_CONTRAST


def stretch_contrast(gray: np.ndarray) -> np.ndarray:
    """``gray`` (H, W), light digit on dark, 0..255 -> float32 with background 0, strokes 1.

    Scaled by :func:`ink_levels`. Raises :class:`PictureError` when the strokes are not
    ``MIN_CONTRAST`` brighter than the background (a blank picture).
    """
    background, strokes = ink_levels(gray)
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
