"""Fetch UCI's pen-digit files, verified, for the download stage (stdlib HTTP, no TensorFlow).

Sources, in order: ``data.mirrors`` (a folder or URL base holding ``<name>`` decompressed or
``<name>.Z`` as ``compress`` writes it), then UCI's zip, whose members are ``<name>.Z``.
Whatever a source gives is decompressed in memory, never beyond what the file can be, and
kept only when the sha256 of the content is the published one and it parses as the expected
number of digits. When no source works, one :class:`download.DownloadError` names every
source tried and why.
"""

from __future__ import annotations

import io
import zipfile
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import ncompress

from mnist_pipeline import download, fileio, pendigits
from mnist_pipeline.http import HttpStatusError, NetworkSettings, SourceError, http_get
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


class PenReader:
    """Reads pen files from mirrors and UCI's zip; the zip is fetched at most once per run."""

    def __init__(self, network: NetworkSettings, zip_location: str | None = None):
        self.network = network
        self.zip_location = zip_location or pendigits.UCI_ZIP
        self._zip: zipfile.ZipFile | SourceError | None = None

    def from_mirror(self, location: str, pen_file: PenFile) -> tuple[bytes, str]:
        """(content, origin) of ``<name>.Z`` or ``<name>`` at a mirror, not yet verified."""
        limit = download.largest_copy(pen_file.size)
        for name in (pen_file.name + ".Z", pen_file.name):
            data, origin = self._get(location, name, limit)
            if data is not None:
                return self._unpack(data, origin, pen_file), origin
        raise SourceError(location, f"no {pen_file.name}.Z or {pen_file.name} there")

    def from_zip(self, pen_file: PenFile) -> tuple[bytes, str]:
        """(content, origin) of the ``<name>.Z`` member of UCI's zip, not yet verified."""
        archive = self._archive()
        # The member, at the top of the zip or in a folder of it: UCI has moved files before.
        member = next((info for info in archive.infolist()
                       if PurePosixPath(info.filename).name == pen_file.name + ".Z"), None)
        if member is None:
            raise SourceError(self.zip_location, f"no member {pen_file.name}.Z")
        origin = f"{self.zip_location}[{member.filename}]"
        if member.file_size > download.largest_copy(pen_file.size):
            raise SourceError(origin, f"{member.file_size:,} bytes, more than the file can be")
        try:
            data = archive.read(member)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise SourceError(origin, f"corrupt zip member ({error})") from None
        return self._unpack(data, origin, pen_file), origin

    def _unpack(self, data: bytes, origin: str, pen_file: PenFile) -> bytes:
        if data[:2] == b"\x1f\x9d":
            return uncompress_z(data, origin, pen_file.size)
        return data

    def _get(self, location: str, name: str, limit: int) -> tuple[bytes | None, str]:
        if download.is_url(location):
            url = location.rstrip("/") + "/" + name
            try:
                return http_get(url, self.network, name, limit), url
            except HttpStatusError as error:
                if error.status == 404:
                    return None, url
                raise
        path = download.local_folder(location) / name
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
            raise SourceError(location, f"not a zip file ({error})") from None


def verify(content: bytes, origin: str, pen_file: PenFile) -> None:
    """SourceError unless ``content`` is exactly the published file (sha256, then digits)."""
    actual = download.sha256_hex(content)
    if actual != pen_file.sha256:
        raise download.sha256_mismatch(origin, actual, pen_file.sha256)
    try:
        digits = pendigits.parse(content.decode("ascii"), pen_file.name, "check")
        pendigits.check_count(digits, pen_file)
    except (UnicodeDecodeError, pendigits.PenFileError) as error:
        raise SourceError(origin, str(error)) from None


def fetch(pen_file: PenFile, mirrors: tuple[str, ...], reader: PenReader) -> tuple[bytes, str]:
    """(content, origin) from the first source with a verified copy, or DownloadError."""
    failures = []
    attempts = [partial(reader.from_mirror, mirror, pen_file) for mirror in mirrors]
    attempts.append(partial(reader.from_zip, pen_file))
    for attempt in attempts:
        try:
            content, origin = attempt()
            verify(content, origin, pen_file)
            return content, origin
        except SourceError as error:
            failures.append(f"{error.origin}: {error.reason}")
    lines = [f"could not get a verified {pen_file.name} (UCI pen digits); tried "
             f"{len(failures)} source(s):", *(f"  - {failure}" for failure in failures),
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
