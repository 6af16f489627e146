"""The pipeline's files in and out: atomic writes, JSON, CSV and .npy (never a pickle), and
the checks of an output file that a user names (:func:`check_output`, :func:`write_output`).

A reader (or a crashed run) never sees a half-written file: each writer writes to a
temporary file or folder beside the target, then renames it over the target; the rename is
atomic on POSIX file systems. Temporaries are named ``.<target>.*.tmp`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas costs ~0.4 s to import; download never needs it
    import pandas as pd

# mkstemp creates files readable by the owner only; outputs should follow the umask instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` if the block succeeds.

    On any exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.chmod(temporary_path, 0o666 & ~_UMASK)
        os.replace(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; swap it in if the block succeeds.

    The old ``target`` (if any) is renamed away, the new one renamed into place, then the old
    one deleted: a reader sees the old folder or the new one, never a mix. On any exception
    the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_UMASK)
        if target.exists():
            retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                            suffix=".tmp"))
            os.replace(target, retired / target.name)
            os.replace(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def check_writable(target: str | Path) -> None:
    """Raise OSError, one line ``<target>: cannot be written (<why>)``, unless ``target`` can
    be written; for stages and commands that work for minutes before they write.

    Refused: a file where a folder of the path should be, a folder, a device or FIFO that
    is not writable (one that is, such as /dev/stdout, passes: it is written to directly).
    Otherwise a file is created and removed at once in the nearest existing folder, where
    the atomic write will create the missing folders and its temporary file. Creates
    nothing that stays; a full disk shows only when writing.
    """
    target = Path(target)
    blocking = next((parent for parent in reversed(target.parents) if parent.exists()
                     and not parent.is_dir()), None)
    if blocking is not None:
        raise OSError(f"{target}: cannot be written ({blocking} is a file, not a folder)")
    if target.is_dir():
        raise OSError(f"{target}: cannot be written (it is a folder)")
    if target.exists() and not target.is_file():
        if os.access(target, os.W_OK):
            return
        raise OSError(f"{target}: cannot be written (permission denied)")
    folder = target.absolute().parent
    while not folder.exists() and not folder.is_symlink():
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=f".{target.name}.", suffix=".tmp"):
            pass
    except OSError as error:
        raise OSError(f"{target}: cannot be written (cannot create files in {folder}: "
                      f"{error.strerror or error})") from None


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def copy_file(source: str | Path, target: str | Path) -> None:
    """``source``'s bytes into ``target``, atomically (a reader sees the old file or the
    whole copy)."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, data: Any) -> None:
    """Pretty, key-sorted JSON with a trailing newline, so git diffs stay readable."""
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def write_csv(target: str | Path, table: pd.DataFrame) -> None:
    """A table as CSV with a header row and no index column (what `dvc plots` reads)."""
    write_text(target, table.to_csv(index=False))


def save_npy(target: str | Path, array: np.ndarray) -> None:
    with atomic_path(target) as temporary, open(temporary, "wb") as stream:
        np.save(stream, array, allow_pickle=False)


def load_npy(path: str | Path) -> np.ndarray:
    """Load an array written by :func:`save_npy`; never unpickles objects."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run `dvc repro preprocess` first") from None
    except ValueError as error:
        raise ValueError(f"{path}: not a valid .npy array ({error})") from None


# ---------------------------------------------------------------------------------------
# A command's output file, named by its user


def check_output(output: Path, inputs: Sequence[Path],
                 read_suffixes: Collection[str] = ()) -> None:
    """Raise OSError (one line, as :func:`check_writable`) unless a command's output can be
    written to ``output`` without overwriting one of ``inputs``; found before any work.

    Refused besides what :func:`check_writable` refuses: ``output`` is one of the input
    files, by the same or another path, a symbolic or a hard link; or it has one of
    ``read_suffixes`` (lower case) inside an input directory, where the command would read
    it as an input. A device or FIFO (``-o /dev/stdout``) is written to, never replaced:
    not compared.
    """
    if output.exists() and not output.is_file():
        inputs = []
    for source in inputs:
        if source.is_dir():
            if output.suffix.lower() in read_suffixes and \
                    same_file(output.absolute().parent, source):
                raise OSError(f"{output}: cannot be written (it would be read as a picture "
                              f"of the input directory {source})")
        elif same_file(output, source):
            raise OSError(f"{output}: cannot be written (it is the input {source})")
    check_writable(output)


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same inode where both exist (symbolic and hard
    links), else the same absolute path once symbolic links are resolved."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one is missing (or a loop): compare where the names lead
        try:
            return first.resolve() == second.resolve()
        except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before 3.13)
            return False


def write_output(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output``, or to standard output when None; OSError, one line
    ``<output>: cannot be written (<why>)``, when it cannot (a full disk, a closed pipe),
    with nothing half-written in place.

    A file is written atomically (a temporary file renamed over it), so a failure leaves
    the old one as it was; a device or FIFO (``/dev/stdout``) is written to directly.
    """
    try:
        if output is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        elif output.exists() and not output.is_file():
            with open(output, "w", encoding="utf-8") as stream:
                stream.write(text)
        else:
            write_text(output, text)
    except OSError as error:
        if output is None:
            discard_stdout()
        raise OSError(f"{output or 'standard output'}: cannot be written "
                      f"({error.strerror or error})") from None


def discard_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit does not fail
    again on what is still buffered (and print a traceback-like warning)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (a test's capture): nothing will flush it at exit
