"""Fetch UCI's pen-digit files, verified, for the download stage (stdlib HTTP, no TensorFlow).

Sources, in order: ``data.mirrors`` (a folder or URL base holding ``<name>.Z`` as
``compress`` writes it, or ``<name>`` decompressed), then UCI's zip, whose members are
``<name>.Z``. Every copy is a candidate, tried in that order until one verifies: a mirror's
``.Z``, then its plain file, then each member of the zip of that name (at the top or in a
folder), so a bad copy never hides a good one. Whatever a candidate gives is decompressed in
memory, never beyond what the file can be, and kept only when the sha256 of the content is
the published one and it parses as the expected number of digits. When none works, one
:class:`download.DownloadError` names every candidate tried and why.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import ncompress

from mnist_pipeline import download, fileio, pendigits
from mnist_pipeline.http import (
    HostError,
    HttpStatusError,
    NetworkSettings,
    SourceError,
    http_get,
)
from mnist_pipeline.pendigits import PenFile

# UCI's zip holds the two .Z files and a few small text files; a copy larger than this is
# not it.
ZIP_MAX_BYTES = 16 << 20


class _Bounded(io.RawIOBase):
    """A write-only stream that keeps at most ``limit`` bytes and then refuses more."""

    def __init__(self, limit: int):
        self.limit, self.buffer = limit, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(self.buffer) + len(data) > self.limit:
            raise OverflowError
        self.buffer += data
        return len(data)


def uncompress_z(data: bytes, origin: str, max_bytes: int) -> bytes:
    """The content of Unix ``compress`` (LZW, ``.Z``) ``data``; SourceError if it is corrupt
    or unpacks to more than ``max_bytes`` (it stops there: a bomb costs no memory)."""
    if data[:2] != b"\x1f\x9d":
        raise SourceError(origin, "not a .Z file (compress's magic bytes 1f 9d missing)")
    out = _Bounded(max_bytes)
    try:
        ncompress.decompress(data, out)
    except OverflowError:
        raise SourceError(origin, f"unpacks to more than the {max_bytes:,} bytes of the "
                                  "file") from None
    except (ValueError, OSError, RuntimeError) as error:
        raise SourceError(origin, f"corrupt .Z data ({error})") from None
    return bytes(out.buffer)


Copy = tuple[bytes, str]  # (content, origin) of one candidate, not yet verified


class PenReader:
    """Reads pen files from mirrors and UCI's zip; the zip is fetched at most once per run."""

    def __init__(self, network: NetworkSettings, zip_location: str | None = None):
        self.network = network
        self.zip_location = zip_location or pendigits.UCI_ZIP
        self._zip: zipfile.ZipFile | SourceError | None = None

    def copies(self, pen_file: PenFile, mirrors: tuple[str, ...]) -> Iterator[Copy | SourceError]:
        """Every candidate copy of ``pen_file``, in the order to try them: each mirror's, then
        the zip's. A candidate that could not be had comes as its SourceError. Each is
        fetched only when the caller asks for the next (the zip not at all if a mirror's
        copy verifies)."""
        for mirror in mirrors:
            yield from self.from_mirror(mirror, pen_file)
        yield from self.from_zip(pen_file)

    def from_mirror(self, location: str, pen_file: PenFile) -> Iterator[Copy | SourceError]:
        """``<name>.Z``, then ``<name>``, at a mirror: each one there is a candidate; when
        neither is, one SourceError says so. A server that fails as a whole
        (:class:`HostError`) is not asked for the plain name."""
        limit = download.largest_copy(pen_file.size)

        def fetch(name: str) -> Copy | None:
            data, origin = self._get(location, name, limit)
            return None if data is None else (data, origin)

        nothing_there = yield from download.each_copy(
            (pen_file.name + ".Z", pen_file.name), fetch,
            lambda copy: (self._unpack(*copy, pen_file), copy[1]))
        if nothing_there:
            yield SourceError(location, f"no {pen_file.name}.Z or {pen_file.name} there")

    def from_zip(self, pen_file: PenFile) -> Iterator[Copy | SourceError]:
        """Each member of UCI's zip named ``<name>.Z`` or ``<name>``, at the top or in a
        folder (UCI has moved files before), in the zip's order; one SourceError when the
        zip cannot be had or holds none."""
        try:
            archive = self._archive()
        except SourceError as error:
            yield error
            return
        names = (pen_file.name + ".Z", pen_file.name)
        members = [info for info in archive.infolist()
                   if not info.is_dir() and PurePosixPath(info.filename).name in names]
        if not members:
            yield SourceError(self.zip_location, f"no member {pen_file.name}.Z or "
                                                 f"{pen_file.name}")
        for member in members:
            origin = f"{self.zip_location}[{member.filename}]"
            try:
                yield self._unpack(read_member(archive, member, origin, pen_file), origin,
                                   pen_file), origin
            except SourceError as error:
                yield error

    @staticmethod
    def _unpack(data: bytes, origin: str, pen_file: PenFile) -> bytes:
        if data[:2] == b"\x1f\x9d":
            return uncompress_z(data, origin, pen_file.size)
        return data

    def _get(self, location: str, name: str, limit: int) -> tuple[bytes | None, str]:
        """(bytes, origin) of ``name`` at a mirror; bytes None where it is not there."""
        if download.is_url(location):
            url = location.rstrip("/") + "/" + name
            try:
                return http_get(url, self.network, name, limit), url
            except HttpStatusError as error:
                if error.status == 404:
                    return None, url
                raise
        try:
            path = download.local_folder(location) / name
        except SourceError as error:  # a scheme that is no folder: the mirror, not one file
            raise HostError(error.origin, error.reason) from None
        if not path.is_file():
            return None, str(path)
        return download.read_local(path, limit), str(path)

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = self._open_zip()
            except SourceError as error:
                self._zip = error  # fetched once: a failed zip is not retried per file
        if isinstance(self._zip, SourceError):
            raise self._zip
        return self._zip

    def _open_zip(self) -> zipfile.ZipFile:
        location = self.zip_location
        if download.is_url(location):
            data = http_get(location, self.network, Path(location).name, ZIP_MAX_BYTES)
        else:
            data = download.read_local(Path(location).expanduser(), ZIP_MAX_BYTES)
        try:
            return zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as error:
            raise SourceError(location, f"not a zip file ({one_line(error)})") from None
        except Exception as error:  # noqa: BLE001 (a damaged directory: one line, no traceback)
            reason = f"{type(error).__name__}: {one_line(error)}"
            raise SourceError(location, f"unreadable zip file ({reason})") from None


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, origin: str,
                pen_file: PenFile) -> bytes:
    """The bytes of one zip member, or a one-line SourceError naming it (``origin``): larger
    than a copy can be, encrypted, compressed by a method Python's zipfile lacks, corrupt."""
    if member.file_size > download.largest_copy(pen_file.size):
        raise SourceError(origin, f"{member.file_size:,} bytes, more than the file can be")
    if member.flag_bits & 0x1:
        raise SourceError(origin, "encrypted zip member (needs a password)")
    try:
        return archive.read(member)
    except NotImplementedError:
        raise SourceError(origin, f"zip compression method {member.compress_type} is not "
                                  "supported by Python's zipfile") from None
    except RuntimeError as error:  # zipfile's "File ... is encrypted, password required"
        raise SourceError(origin, f"unreadable zip member ({one_line(error)})") from None
    except Exception as error:  # noqa: BLE001 (any other zip failure: one line, next copy)
        reason = f"{type(error).__name__}: {one_line(error)}"
        raise SourceError(origin, f"corrupt zip member ({reason})") from None


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def verify_pen_file(content: bytes, origin: str, pen_file: PenFile) -> None:
    """SourceError unless ``content`` is exactly the published pen file (sha256, then the
    UNIPEN digits and their count)."""
    actual = download.sha256_hex(content)
    if actual != pen_file.sha256:
        raise download.sha256_mismatch(origin, actual, pen_file.sha256)
    try:
        digits = pendigits.parse(content.decode("ascii"), pen_file.name, "check")
        pendigits.check_count(digits, pen_file)
    except (UnicodeDecodeError, pendigits.PenFileError) as error:
        raise SourceError(origin, str(error)) from None


def fetch(pen_file: PenFile, mirrors: tuple[str, ...], reader: PenReader) -> Copy:
    """(content, origin) of the first candidate that verifies, or DownloadError naming every
    candidate tried and why it failed."""
    failures = []
    for copy in reader.copies(pen_file, mirrors):
        try:
            if isinstance(copy, SourceError):
                raise copy
            content, origin = copy
            verify_pen_file(content, origin, pen_file)
            return content, origin
        except SourceError as error:
            failures.append(f"{error.origin}: {error.reason}")
    lines = [f"could not get a verified {pen_file.name} (UCI pen digits); tried "
             f"{len(failures)} candidate(s):", *(f"  - {failure}" for failure in failures),
             "No network? Put pendigits-orig.tra and pendigits-orig.tes in a folder listed in "
             "data.mirrors, or set data.drawn: false."]
    raise download.DownloadError("\n".join(lines))


def download_pen_files(folder: Path, mirrors: tuple[str, ...], network: NetworkSettings,
                       pen_files: tuple[PenFile, ...] | None = None,
                       zip_location: str | None = None) -> dict[str, dict[str, Any]]:
    """Write each verified pen file (default: pendigits.FILES) into ``folder``; the manifest
    entries {name: {sha256, bytes, source}}. Raises DownloadError (every source named)
    before writing a bad file."""
    reader = PenReader(network, zip_location)
    entries = {}
    for pen_file in pen_files or pendigits.FILES:
        content, origin = fetch(pen_file, mirrors, reader)
        fileio.write_bytes(folder / pen_file.name, content)
        entries[pen_file.name] = {"sha256": download.sha256_hex(content),
                                  "bytes": len(content), "source": origin}
    return entries
