"""The IDX reader: good files round-trip, every kind of damage is refused naming the file."""

from __future__ import annotations

import gzip
import io
import tracemalloc

import numpy as np
import pytest

from mnist_pipeline import idx


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels() -> np.ndarray:
    return np.array([0, 9, 3, 3, 1, 8, 5], dtype=np.uint8)


def test_encode_writes_the_published_header(images, labels):
    assert idx.encode(images)[:16] == bytes.fromhex("00000803" "00000007" "0000001c" "0000001c")
    assert idx.encode(labels)[:8] == bytes.fromhex("00000801" "00000007")
    assert int.from_bytes(idx.encode(images)[:4], "big") == idx.IMAGES_MAGIC
    assert int.from_bytes(idx.encode(labels)[:4], "big") == idx.LABELS_MAGIC


@pytest.mark.parametrize("array_name", ["images", "labels"])
def test_decode_inverts_encode(array_name, request):
    array = request.getfixturevalue(array_name)
    decoded = idx.decode(idx.encode(array))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_round_trips_raw_and_gzip_files(tmp_path, images, compress):
    data = idx.encode(images)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(data) if compress else data)
    np.testing.assert_array_equal(idx.read(path), images)


def test_gzip_is_recognised_by_content_not_by_name(tmp_path, labels):
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(idx.encode(labels)))
    np.testing.assert_array_equal(idx.read(path), labels)


def test_empty_arrays_round_trip():
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    assert idx.decode(idx.encode(empty)).shape == (0, 28, 28)


@pytest.mark.parametrize(
    "array", [np.zeros((2, 2), np.int32), np.zeros((1, 1, 1, 1), np.uint8), np.float32(1.0)]
)
def test_encode_refuses_what_idx_ubyte_cannot_hold(array):
    with pytest.raises(ValueError, match="uint8 array of 1-3 dims"):
        idx.encode(np.asarray(array))


def _damaged(images: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """Broken variants of a good file: name -> (bytes, what the error must say)."""
    good = idx.encode(images)
    return {
        "empty": (b"", "too short"),
        "bad magic": (b"\x00\x00\x0d\x03" + good[4:], "bad magic number 0x00000d03"),
        "not idx at all": (b"PK\x03\x04" + good[4:], "bad magic number"),
        "zero dims": (b"\x00\x00\x08\x00" + good[4:], "bad magic number"),
        "four dims": (b"\x00\x00\x08\x04" + good[4:], "bad magic number"),
        "truncated header": (good[:10], "truncated header"),
        "truncated data": (good[:-1], "truncated"),
        "trailing bytes": (good + b"\x00\x00", "2 unexpected bytes"),
    }


@pytest.mark.parametrize("case", list(_damaged(np.zeros((3, 28, 28), np.uint8))))
def test_damaged_files_are_refused_naming_the_file(tmp_path, images, case):
    data, message = _damaged(images)[case]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(idx.IdxFormatError, match=message) as caught:
        idx.read(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "trailing garbage"])
def test_corrupt_gzip_is_refused_naming_the_file(tmp_path, images, damage):
    compressed = gzip.compress(idx.encode(images))
    middle = len(compressed) // 2
    data = {
        "truncated": compressed[:middle],
        "flipped byte": compressed[:middle] + bytes([compressed[middle] ^ 0xFF])
        + compressed[middle + 1:],
        "trailing garbage": compressed + b"garbage",
    }[damage]
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(data)
    with pytest.raises(idx.IdxFormatError, match="corrupt gzip data") as caught:
        idx.read(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        idx.read(tmp_path / "nothing-here")


def test_check_images_wants_n_by_28_by_28(images):
    idx.check_images(images, "ok")
    for shape in [(7, 28), (7, 28, 27), (7, 32, 32)]:
        with pytest.raises(idx.IdxFormatError, match=r"some-file: expected images of shape"):
            idx.check_images(np.zeros(shape, np.uint8), "some-file")


def test_check_labels_wants_a_vector_of_classes_0_to_9(labels):
    idx.check_labels(labels, "ok")
    idx.check_labels(np.zeros(0, np.uint8), "empty is fine")
    with pytest.raises(idx.IdxFormatError, match="labels-file: expected an integer vector"):
        idx.check_labels(np.zeros((3, 28, 28), np.uint8), "labels-file")
    with pytest.raises(idx.IdxFormatError,
                       match=r"labels-file: labels outside 0\.\.9 \(min 1, max 11\)"):
        idx.check_labels(np.array([1, 11, 2], np.uint8), "labels-file")
    with pytest.raises(idx.IdxFormatError, match=r"outside 0\.\.9 \(min -1, max 1\)"):
        idx.check_labels(np.array([1, -1], np.int64), "signed-labels")
    with pytest.raises(idx.IdxFormatError, match=r"outside 0\.\.2 \(min 0, max 3\)"):
        idx.check_labels(np.array([0, 3]), "three-classes", num_classes=3)


# --- bounded reading: what a header claims, what a gzip unpacks -----------------------------


def traced_peak(function, *args, **kwargs) -> tuple[BaseException | None, int]:
    """Call ``function``; the exception it raised (or None) and its peak traced memory."""
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        raised = None
    except Exception as error:  # noqa: BLE001 - the caller checks which
        raised = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def test_a_gzip_bomb_is_not_unpacked(tmp_path, images):
    # Good images, then 64 MiB of zeros that compress to 64 KB: refused after reading at
    # most the declared data and 1 MiB more, not after unpacking all of it.
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(idx.encode(images))
        for _ in range(64):
            stream.write(bytes(1 << 20))
    raised, peak = traced_peak(idx.read, path)
    assert isinstance(raised, idx.IdxFormatError) and str(path) in str(raised)
    assert "more than 1,048,576 unexpected bytes after the data of shape (7, 28, 28)" in str(raised)
    assert peak < 8 << 20


def test_a_header_claim_beyond_max_bytes_is_refused_before_reading(tmp_path, images):
    path = tmp_path / "claims-idx3-ubyte"
    path.write_bytes(idx.encode(images))
    with pytest.raises(idx.IdxFormatError, match=r"\(7, 28, 28\) \(5,488 bytes\), more than "
                                                 r"the 5,000 allowed"):
        idx.read(path, max_bytes=5000)
    np.testing.assert_array_equal(idx.read(path, max_bytes=5488), images)


def test_a_false_claim_costs_only_what_is_there(tmp_path):
    # A 2 KB file whose header claims 2**31 x 28 x 28 bytes (1.7 TB).
    path = tmp_path / "forged-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") + bytes([0, 0, 0, 28]) * 2
                     + bytes(2000))
    raised, peak = traced_peak(idx.read, path)
    assert isinstance(raised, idx.IdxFormatError) and "truncated" in str(raised)
    assert peak < 4 << 20


class Endless(io.RawIOBase):
    """A stream like /dev/zero: ``prefix``, then zero bytes forever."""

    def __init__(self, prefix: bytes = b""):
        self.prefix = prefix

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = len(buffer)
        head, self.prefix = self.prefix[:size], self.prefix[size:]
        buffer[:size] = head + bytes(size - len(head))
        return size


def test_an_endless_stream_is_refused(images):
    with pytest.raises(idx.IdxFormatError, match="endless: bad magic number 0x00000000"):
        idx.read(io.BufferedReader(Endless()), "endless")
    stream = io.BufferedReader(Endless(idx.encode(images)))
    with pytest.raises(idx.IdxFormatError, match="more than 1,048,576 unexpected bytes"):
        idx.read(stream, "endless")
