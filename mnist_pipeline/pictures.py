"""Read an untrusted picture file safely: one PNG or JPEG -> grayscale pixels, bounded.

Whatever a user or a client sends is refused, before it is decoded, unless it is one PNG or
JPEG picture of at most ``MAX_PICTURE_PIXELS`` (told from its first bytes and its header, a
JPEG first set to decode at a reduced scale), whose PNG chunks are all intact; decoding then
costs at most :func:`decode_cost` bytes, which a server reserves from a :class:`DecodeBudget`
shared by its threads. Making the pixels an MNIST-style digit is
:mod:`mnist_pipeline.digit_image`'s job, which needs nothing of this module.

- :func:`picture_to_digit`: a picture (path, bytes, binary stream or PIL image) -> (28, 28);
- :func:`read_picture`: the same source -> grayscale float32 0..255 (H, W);
- :func:`picture_format`: the format a file's first bytes announce.

Anything that cannot be read raises :class:`PictureError` (one class with digit_image's, so
that a picture without a digit in it is refused the same way).
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
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from mnist_pipeline.digit_image import InvertMode, PictureError, normalize_digit

# A path, the file's bytes, an open binary stream, or a picture already opened with Pillow.
PictureSource = str | os.PathLike[str] | bytes | BinaryIO | Image.Image

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
# and a phone photo at full size would make normalizing's filters (digit_image) slow.
WORKING_MAX_SIDE = 512


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

    :func:`read_picture` (decoding within ``budget``), then
    :func:`~mnist_pipeline.digit_image.normalize_digit`; raises :class:`PictureError`.
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
    its pixel data (IDAT) would be decoded into garbage without a word. Pillow's
    ``Image.verify()`` checks the rest but not IEND's CRC, holds each chunk whole in memory
    (one chunk may be the whole file), and closes the picture, to be opened again: this walk
    refuses all that it refuses, and IEND too, in bounded memory. A header (IHDR)
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
