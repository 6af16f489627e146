"""``serve`` follows its model file, as TensorFlow Serving follows its model folder.

TF Serving polls its base path (``--file_system_poll_wait_seconds``, 1 s by default), loads
a new version beside the one serving, switches once it is ready, and lets requests in flight
finish on the old one. :class:`ModelWatcher` does the same for one file: every
:data:`POLL_SECONDS` it reads the file's stat (device, inode, size, modification and change
times, following a symbolic link), so that each way DVC replaces a file is seen: a rename
(``dvc exp run``, an atomic write), a rewrite in place, a hard link or symbolic link to its
cache (``dvc checkout``, ``dvc pull``). A changed file is loaded in the watcher's thread once
its stat has held still for :data:`SETTLE_SECONDS` (a file still being written is not read),
checked as at start (:func:`mnist_pipeline.inference.load`: the contract) and made to answer
one blank digit with finite probabilities; only then is it handed over (``on_load``), and
the server switches between two model calls. A file that fails is refused with one log line
and the model serving keeps answering; the next change of the file is tried again. A file
whose bytes are those served (a link to the same cache file) is not loaded twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mnist_pipeline import inference
from mnist_pipeline.prepared import IMAGE_SHAPE

LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log, as guard's
POLL_SECONDS = 1.0  # TF Serving's --file_system_poll_wait_seconds default
SETTLE_SECONDS = 0.25  # a changed file is read once its stat holds still this long
_HASH_BYTES = 1 << 20

# What identifies one version of the file: (device, inode, size, mtime_ns, ctime_ns).
Stamp = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and which file it came from: what ``/health`` reports."""

    classifier: inference.Classifier
    name: str  # the file's path as given, or the kind of a model built in memory
    sha256: str | None  # of the bytes loaded; None for a model built in memory
    modified: str | None  # the file's modification time, ISO 8601 UTC
    loaded: str  # when it was loaded, ISO 8601 UTC
    stamp: Stamp | None = None


def stamp_of(path: Path) -> Stamp:
    """The stat of the file ``path`` names (a symbolic link followed); OSError if none."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_HASH_BYTES):
            digest.update(block)
    return digest.hexdigest()


def utc_text(seconds: float) -> str:
    """``2026-12-07T16:05:00.123Z`` for a POSIX time."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds"
                                                          ).replace("+00:00", "Z")


def describe(classifier: inference.Classifier, stamp: Stamp | None = None,
             sha256: str | None = None) -> ServedModel:
    """``classifier`` as served: the digest and time of its file when it has one (read now,
    unless given)."""
    loaded = utc_text(time.time())
    if classifier.path is None:
        return ServedModel(classifier, classifier.kind, None, None, loaded)
    try:
        stamp = stamp or stamp_of(classifier.path)
        sha256 = sha256 or sha256_of(classifier.path)
    except OSError:  # gone since it was loaded: the watcher says so at its first poll
        return ServedModel(classifier, str(classifier.path), None, None, loaded)
    return ServedModel(classifier, str(classifier.path), sha256, utc_text(stamp[3] / 1e9),
                       loaded, stamp)


def load_checked(path: Path, threads: int | None) -> tuple[ServedModel, Stamp]:
    """Load the file at ``path`` as at start and check that it answers one blank digit with
    10 finite probabilities. Returns it and the stat it was read at; raises
    :class:`inference.ModelError` (one line), or :class:`FileChangedError` when the file
    changed while it was read."""
    before = stamp_of(path)
    sha256 = sha256_of(path)
    classifier = inference.load(path, threads)
    probabilities = np.asarray(classifier.run_batch(np.zeros((1, *IMAGE_SHAPE), np.float32)))
    if probabilities.shape != (1, 10):
        raise inference.ModelError(f"{path}: answers a blank digit with shape "
                                   f"{probabilities.shape}, not (1, 10)")
    if not np.isfinite(probabilities).all():
        raise inference.ModelError(f"{path}: answers a blank digit with NaN or infinite "
                                   "probabilities")
    after = stamp_of(path)
    if after != before:
        raise FileChangedError(path)
    return describe(classifier, before, sha256), before


class FileChangedError(OSError):
    """The file changed while it was read: read again once it holds still."""


class ModelWatcher:
    """Polls ``path`` every ``poll_seconds`` in a daemon thread and calls ``on_load`` with
    each new version that loads and passes its checks (:func:`load_checked`).

    ``served``: the version serving now (its stamp and digest are the starting point).
    Refusals are logged once per version of the file and kept in :attr:`refused` (one line,
    None once a good version is served); :attr:`reloads` counts the versions handed over.
    """

    def __init__(self, path: str | Path, served: ServedModel,
                 on_load: Callable[[ServedModel], None], threads: int | None = None,
                 poll_seconds: float = POLL_SECONDS, settle_seconds: float = SETTLE_SECONDS):
        if poll_seconds <= 0 or settle_seconds < 0:
            raise ValueError("poll_seconds must be > 0 and settle_seconds >= 0")
        self.path, self.on_load, self.threads = Path(path), on_load, threads
        self.poll_seconds, self.settle_seconds = poll_seconds, settle_seconds
        self.refused: str | None = None
        self.reloads = 0
        self._seen: Stamp | str | None = served.stamp  # the version last dealt with
        self._sha256 = served.sha256
        self._settling: Stamp | None = None  # a change seen once, to be seen again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="model-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        wait = self.poll_seconds
        while not self._stop.wait(wait):
            wait = self.poll_seconds
            try:
                if self.check() == "settling":
                    wait = self.settle_seconds
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                LOG.exception("model %s: the watcher failed; it goes on polling", self.path)

    def check(self, settled: bool = False) -> str:
        """One poll: ``unchanged``, ``settling`` (changed: look again after
        ``settle_seconds``), ``same bytes``, ``refused`` or ``loaded``. ``settled``: load a
        changed file at once (tests)."""
        try:
            stamp: Stamp | str = stamp_of(self.path)
        except OSError:
            try:
                inference.check_model_file(self.path)
                stamp = f"{self.path}: cannot be read"
            except inference.ModelError as error:
                stamp = str(error)
        if stamp == self._seen:
            return "unchanged"
        if isinstance(stamp, str):  # missing, or not a file: wait for the next version
            self._refuse(stamp, stamp)
            return "refused"
        if not settled and stamp != self._settling:
            self._settling = stamp
            return "settling"
        self._settling = None
        started = time.perf_counter()
        try:
            if self._sha256 is not None and sha256_of(self.path) == self._sha256:
                self._seen, self.refused = stamp, None  # the bytes served: nothing to load
                return "same bytes"
            served, stamp = load_checked(self.path, self.threads)
        except FileChangedError:
            return "settling"
        except (inference.ModelError, OSError) as error:
            reason = (str(error) if isinstance(error, inference.ModelError)
                      else f"{self.path}: cannot be read ({error.strerror or error})")
            self._refuse(stamp, reason)
            return "refused"
        self.on_load(served)
        self._seen, self._sha256, self.refused = stamp, served.sha256, None
        self.reloads += 1
        LOG.info("model %s: now serving sha256 %s (loaded in %.2f s)", self.path,
                 served.sha256[:12], time.perf_counter() - started)
        return "loaded"

    def _refuse(self, stamp: Stamp | str, reason: str) -> None:
        self._seen, self.refused = stamp, reason
        LOG.warning("model file refused, the model loaded before keeps answering: %s", reason)
