"""The IDX file format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

A file is a big-endian header, ``00 00 <type> <ndim>`` followed by ``ndim`` uint32 sizes,
then the data. These datasets use unsigned bytes only: magic 0x00000803 for images
(N x 28 x 28) and 0x00000801 for labels (N).
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnist_pipeline import prepared

UBYTE = 0x08
IMAGES_MAGIC = 0x00000803  # the two magic numbers MNIST uses, as error messages name them
LABELS_MAGIC = 0x00000801
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 20
# Data after the declared array is an error; this much of it is counted for the message.
TRAILING_BYTES_COUNTED = 1 << 20


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file of unsigned bytes."""


def decode(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes (not compressed) into a uint8 array; ``name`` goes into errors."""
    return read(io.BytesIO(data), name)


def read(
    source: str | Path | BinaryIO, name: str | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """Parse an IDX file or binary stream, raw or gzip-compressed, into a uint8 array.

    ``name`` (default: the path) goes into errors. Only what the header declares is read,
    plus a little to find trailing data, so a gzip bomb or an endless stream costs no more
    memory than the data it claims; and with ``max_bytes``, a header declaring more data than
    that is refused before anything is read. A stream that cannot seek back (a pipe) must be
    buffered (``open(path, "rb")``): its first bytes are peeked at, not consumed.
    Raises :class:`IdxFormatError`, or ``OSError`` when the file cannot be read.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as stream:
            return read(stream, str(source) if name is None else name, max_bytes)
    name = name or str(getattr(source, "name", "IDX data"))
    if peek(source, 2) != GZIP_MAGIC:
        return _read_content(source, name, max_bytes)
    try:
        with gzip.GzipFile(fileobj=source, mode="rb") as content:
            return _read_content(content, name, max_bytes)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise IdxFormatError(f"{name}: corrupt gzip data ({error})") from None


def has_magic(head: bytes) -> bool:
    """Whether ``head`` (a file's first 3+ bytes) starts like an IDX file or a gzip stream."""
    return head[:2] == GZIP_MAGIC or head[:3] == bytes([0, 0, UBYTE])


def peek(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` first bytes of ``stream``, left unread (a buffered or seekable stream)."""
    if hasattr(stream, "peek"):
        return stream.peek(size)[:size]
    position = stream.tell()
    head = stream.read(size)
    stream.seek(position)
    return head


def _read_content(stream: BinaryIO, name: str, max_bytes: int | None) -> np.ndarray:
    """The array in an uncompressed IDX ``stream``; see :func:`read`."""
    magic = read_at_most(stream, 4)
    if len(magic) < 4:
        raise IdxFormatError(f"{name}: {len(magic)} bytes is too short for an IDX header")
    if magic[0] != 0 or magic[1] != 0 or magic[2] != UBYTE or not 1 <= magic[3] <= 3:
        raise IdxFormatError(
            f"{name}: bad magic number 0x{magic.hex()}; expected 0x{LABELS_MAGIC:08x} "
            f"(labels) or 0x{IMAGES_MAGIC:08x} (images)"
        )
    ndim = magic[3]
    sizes = read_at_most(stream, 4 * ndim)
    if len(sizes) < 4 * ndim:
        raise IdxFormatError(
            f"{name}: truncated header ({4 + len(sizes)} of {4 + 4 * ndim} bytes)"
        )
    shape = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
    declared = math.prod(shape)
    if max_bytes is not None and declared > max_bytes:
        raise IdxFormatError(
            f"{name}: header says shape {shape} ({declared:,} bytes), more than the "
            f"{max_bytes:,} allowed"
        )
    data = read_at_most(stream, declared)
    if len(data) < declared:
        raise IdxFormatError(
            f"{name}: truncated: header says shape {shape} ({4 + 4 * ndim + declared} bytes), "
            f"file has {4 + 4 * ndim + len(data)}"
        )
    # Reading on to the end also makes gzip check its CRC; the count stops at a bound.
    trailing = len(read_at_most(stream, TRAILING_BYTES_COUNTED + 1))
    if trailing:
        count = f"{trailing}" if trailing <= TRAILING_BYTES_COUNTED else (
            f"more than {TRAILING_BYTES_COUNTED:,}"
        )
        raise IdxFormatError(f"{name}: {count} unexpected bytes after the data of shape {shape}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_at_most(stream: BinaryIO, size: int) -> bytearray:
    """Up to ``size`` bytes of ``stream``, read in chunks: memory grows with what is really
    there, not with ``size`` (``read(size)`` would allocate all of it up front)."""
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(min(size - len(data), CHUNK_BYTES))
        if not chunk:
            break
        data += chunk
    return data


def encode(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array of 1 to 3 dimensions (the inverse of :func:`decode`)."""
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 3:
        raise ValueError(
            f"IDX encoding needs a uint8 array of 1-3 dims, got {array.dtype} {array.shape}"
        )
    header = bytes([0, 0, UBYTE, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    return header + np.ascontiguousarray(array).tobytes()


def check_images(images: np.ndarray, name: str) -> None:
    """Refuse anything but N x 28 x 28 images (:data:`prepared.IMAGE_SHAPE`)."""
    if images.ndim != 3 or images.shape[1:] != prepared.IMAGE_SHAPE:
        raise IdxFormatError(f"{name}: expected images of shape (N, 28, 28), got {images.shape}")


def check_labels(labels: np.ndarray, name: str, num_classes: int = prepared.NUM_CLASSES) -> None:
    """The project's one label check (:func:`prepared.check_labels`), as an IdxFormatError."""
    try:
        prepared.check_labels(labels, name, num_classes)
    except ValueError as error:
        raise IdxFormatError(str(error)) from None
