"""The IDX file format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

A file is a big-endian header, ``00 00 <type> <ndim>`` followed by ``ndim`` uint32 sizes,
then the data. These datasets use unsigned bytes only: magic 0x00000803 for images
(N x 28 x 28) and 0x00000801 for labels (N).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

UBYTE = 0x08
IMAGES_MAGIC = 0x00000803  # the two magic numbers MNIST uses, as error messages name them
LABELS_MAGIC = 0x00000801


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file of unsigned bytes."""


def decode(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes into a uint8 array; ``name`` (usually the file) goes into errors."""
    if len(data) < 4:
        raise IdxFormatError(f"{name}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0 or data[2] != UBYTE or not 1 <= data[3] <= 3:
        raise IdxFormatError(
            f"{name}: bad magic number 0x{data[:4].hex()}; expected 0x{LABELS_MAGIC:08x} "
            f"(labels) or 0x{IMAGES_MAGIC:08x} (images)"
        )
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{name}: truncated header ({len(data)} of {header_size} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) < expected:
        raise IdxFormatError(
            f"{name}: truncated: header says shape {shape} ({expected} bytes), file has {len(data)}"
        )
    if len(data) > expected:
        raise IdxFormatError(
            f"{name}: {len(data) - expected} unexpected bytes after the data of shape {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


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


def read_bytes(path: str | Path) -> bytes:
    """The decompressed content of an IDX file, gzip-compressed (``.gz``) or not."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise IdxFormatError(f"{path}: corrupt gzip data ({error})") from None
    return data


def read(path: str | Path) -> np.ndarray:
    """Parse an IDX file (raw or gzip-compressed) into a uint8 array."""
    return decode(read_bytes(path), name=str(path))


def check_images(images: np.ndarray, name: str) -> None:
    """Refuse anything but N x 28 x 28 images."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxFormatError(f"{name}: expected images of shape (N, 28, 28), got {images.shape}")


def check_labels(labels: np.ndarray, name: str, num_classes: int = 10) -> None:
    """Refuse anything but a vector of class labels in 0..num_classes-1."""
    if labels.ndim != 1:
        raise IdxFormatError(f"{name}: expected a vector of labels, got shape {labels.shape}")
    if labels.size == 0:
        return
    # IDX labels are uint8, but callers may pass signed arrays: check both ends.
    for bad in (int(labels.min()), int(labels.max())):
        if not 0 <= bad < num_classes:
            raise IdxFormatError(f"{name}: label {bad} is outside 0..{num_classes - 1}")
