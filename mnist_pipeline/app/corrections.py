"""``serve --collect DIR``: the corrections people make on the page, kept as a folder of
labelled pictures (:mod:`mnist_pipeline.labelled`'s format) that the pipeline learns from.

- :class:`CorrectionFolder` writes DIR: each picture re-encoded (a clean grayscale PNG,
  :func:`bodies.clean_picture`) under a name the server makes, and ``labels.csv``
  (``file,label,writer,time``). Needs no FastAPI;
- :mod:`mnist_pipeline.app.corrections_route`: ``POST /corrections`` over it.

One server per folder: DIR itself is locked (``flock``) for as long as the server runs, so a
second ``serve --collect DIR`` is refused at its start, before it removes or writes anything.
Locking the folder rather than a lock file in it leaves nothing in DIR for ``dvc add`` to
track while the server runs.

Every write is atomic: a picture is written to a temporary file in DIR, flushed to disk and
renamed; then ``labels.csv`` as it is on disk, plus the new row, is written the same way,
under one lock. A crash leaves the last complete folder (and maybe a temporary file, or a
picture no row names yet, which the next start removes), never half a row or half a picture.
Renaming, never writing into an existing file, also leaves a DVC cache alone when ``dvc add``
linked the folder's files to it.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
import threading
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mnist_pipeline.app.limits import (
    MAX_CORRECTION_BYTES,
    MAX_CORRECTIONS,
)
from mnist_pipeline.labelled import (
    COLUMNS,
    LABELS_FILE,
    LabelledFolderError,
    read_labels,
    read_labels_text,
)
from mnist_pipeline.prepared import NUM_CLASSES

# A writer id: the page's random one per browser, or any short plain token a client picks.
WRITER = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A label: one ASCII digit (str.isdigit() also takes '²' and '⑦').
LABEL = re.compile(r"[0-9]")
# The names the server gives pictures (uuid4 hex), and its temporary files: only these are
# ever removed from DIR, and only when no row names them.
PICTURE_NAME = re.compile(r"[0-9a-f]{32}\.(png|jpg)")
TEMP_PREFIX, TEMP_SUFFIX = ".correction-", ".tmp"  # .*.tmp: ignored by git (.gitignore)
SUFFIX_OF = {"PNG": ".png", "JPEG": ".jpg"}
HEADER = ",".join(COLUMNS) + "\n"


class CollectError(Exception):
    """DIR cannot hold corrections (a file, not writable, a labels.csv of other columns,
    another server collecting into it), or its labels.csv was changed under the server."""


class FolderFull(Exception):
    """DIR holds its most pictures or bytes already."""


class InvalidCorrection(ValueError):
    """A label or writer that is not what a correction holds (a 422)."""


@dataclass(frozen=True)
class Saved:
    """One correction as saved: its row of labels.csv, and the folder's pictures since."""

    file: str
    label: int
    writer: str
    time: str
    count: int


def parse_label(value: object) -> int:
    """The label field -> 0..9, or :class:`InvalidCorrection`."""
    text = value.strip() if isinstance(value, str) else ""
    if not LABEL.fullmatch(text) or int(text) >= NUM_CLASSES:
        shown = repr(value[:20]) if isinstance(value, str) else "missing (or a file)"
        raise InvalidCorrection(f"label {shown}: expected one digit 0-{NUM_CLASSES - 1}")
    return int(text)


def parse_writer(value: object) -> str:
    """The optional writer field -> a short plain token ('' when absent), or
    :class:`InvalidCorrection`."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not WRITER.fullmatch(value):
        shown = repr(value[:20]) if isinstance(value, str) else "a file"
        raise InvalidCorrection(f"writer {shown}: expected up to 64 letters, digits, '-' "
                                "or '_'")
    return value


def lock_folder(folder: Path, shown: str) -> int:
    """A descriptor of ``folder`` holding its exclusive ``flock`` (released when closed, or
    when the process ends however it ends), or :class:`CollectError` when another holds it."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise CollectError(f"--collect {shown}: another server is collecting into it (one "
                           "serve --collect per folder): stop it, or collect into another "
                           "folder") from None
    except OSError as error:
        os.close(descriptor)
        raise CollectError(f"--collect {shown}: cannot be locked ({error.strerror}: a file "
                           "system without flock?); collect into a local folder") from None
    return descriptor


def folder_bytes(folder: Path) -> int:
    """The bytes of the regular files directly in ``folder`` (links followed)."""
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_file():
                    total += entry.stat().st_size
            except OSError:  # gone meanwhile, or a broken link
                continue
    return total


class CorrectionFolder:
    """DIR, opened for corrections: created if missing, and locked (one server per folder,
    :func:`lock_folder`) until :meth:`close`; an existing one must be a folder this server
    can write and whose labels.csv (if any) has the columns it writes and rows
    :func:`labelled.read_labels` accepts. Left over from a crash, temporary files and
    pictures that no row names are removed. It takes pictures while it holds fewer than
    ``max_pictures`` and ``max_bytes`` (every file in DIR counted). Thread-safe;
    :class:`CollectError` otherwise.
    """

    def __init__(self, folder: str | os.PathLike[str], max_pictures: int = MAX_CORRECTIONS,
                 max_bytes: int = MAX_CORRECTION_BYTES):
        if not str(folder).strip():  # an unset shell variable: not the current directory
            raise CollectError("--collect '': no folder named (an unset variable?); name the "
                               "folder to collect into, e.g. data/extra/corrections")
        self.folder = Path(folder).absolute()
        self.max_pictures = max_pictures
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        if self.folder.exists() and not self.folder.is_dir():
            raise CollectError(f"--collect {folder}: not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._descriptor: int | None = lock_folder(self.folder, str(folder))
        except OSError as error:
            raise CollectError(f"--collect {folder}: cannot be written ({error})") from None
        self._release = weakref.finalize(self, os.close, self._descriptor)
        try:
            self.count = self._open()
            self.bytes = folder_bytes(self.folder)
        except OSError as error:
            self.close()
            raise CollectError(f"--collect {folder}: cannot be written ({error})") from None
        except CollectError:
            self.close()
            raise

    def close(self) -> None:
        """Release DIR (another server may collect into it then); saving is refused after."""
        with self._lock:
            self._descriptor = None
            self._release()

    def __enter__(self) -> CorrectionFolder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def full(self) -> bool:
        return self.count >= self.max_pictures or self.bytes >= self.max_bytes

    def _open(self) -> int:
        """labels.csv's rows, checked, after removing what a crash left."""
        labels = self.folder / LABELS_FILE
        for path in self.folder.iterdir():
            if path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX):
                path.unlink()
        if not labels.exists() and not labels.is_symlink():
            self._write(labels, HEADER.encode())
            return 0
        self._labels_text()  # the header, and a regular file
        try:
            rows = read_labels(self.folder)
        except LabelledFolderError as error:
            raise CollectError(str(error)) from None
        named = {row["file"] for _, row in rows}
        for path in self.folder.iterdir():
            if PICTURE_NAME.fullmatch(path.name) and path.name not in named:
                path.unlink()  # written before a crash, before its row was
        if not os.access(self.folder, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied")
        return len(rows)

    def _labels_text(self) -> str:
        """labels.csv's text as it is on disk (a byte-order mark dropped, a last newline
        added), or :class:`CollectError` when it is not a file of corrections."""
        labels = self.folder / LABELS_FILE
        try:
            text = read_labels_text(self.folder)
        except LabelledFolderError as error:
            raise CollectError(str(error)) from None
        if text.split("\n", 1)[0].strip() != HEADER.strip():
            raise CollectError(f"{labels}: not a folder of corrections (its first line must "
                               f"be {HEADER.strip()})")
        return text if text.endswith("\n") else text + "\n"

    def save(self, picture: bytes, picture_format: str, label: int, writer: str) -> Saved:
        """Add one picture (bytes to keep as they are: :func:`bodies.clean_picture`'s PNG,
        already checked to hold a digit) and its row, appended to labels.csv as it is on
        disk; :class:`FolderFull` when the folder holds ``max_pictures`` or ``max_bytes``
        would be passed; :class:`CollectError` when labels.csv is no longer a file of
        corrections, or the folder was closed. On an OSError (a full disk), nothing of this
        picture is left."""
        name = uuid.uuid4().hex + SUFFIX_OF[picture_format]
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        row = f"{name},{label},{writer},{when}\n"  # every field a plain token: no quoting
        with self._lock:
            if self._descriptor is None:
                raise CollectError(f"{self.folder}: closed (the server is stopping)")
            if self.full or self.bytes + len(picture) + len(row) > self.max_bytes:
                raise FolderFull(self.full_reason())
            text = self._labels_text()
            path = self.folder / name
            self._write(path, picture)
            try:
                self._write(self.folder / LABELS_FILE, (text + row).encode())
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            # rows counted as they are on disk: a line each (no field holds a newline)
            self.count = sum(1 for line in text.splitlines()[1:] if line.strip()) + 1
            self.bytes += len(picture) + len(row)
            return Saved(name, label, writer, when, self.count)

    def full_reason(self) -> str:
        if self.count >= self.max_pictures:
            return (f"the corrections folder holds {self.count:,} pictures, the most this "
                    f"server takes (--collect-max {self.max_pictures:,}): track them (dvc add) "
                    "and start it on a new folder, or with a higher --collect-max")
        return (f"the corrections folder holds {self.bytes:,} bytes, and takes "
                f"{self.max_bytes:,} at most (--collect-max-bytes): track them (dvc add) and "
                "start it on a new folder, or with a higher --collect-max-bytes")

    def _write(self, path: Path, data: bytes) -> None:
        """``data`` into ``path`` atomically and durably: a temporary file in the folder,
        flushed, renamed over ``path``, the folder's entry flushed too."""
        temp = self.folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with io.FileIO(descriptor, "w") as stream:
                view = memoryview(data)
                while view:
                    view = view[stream.write(view):]
                os.fsync(descriptor)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
