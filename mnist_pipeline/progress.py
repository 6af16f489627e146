"""Progress of long work (downloads, drawing the pen digits): a tqdm bar on a terminal, a few
plain lines in a log or CI, where a bar would leave a line per refresh."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class ProgressLines:
    """Progress as a few plain lines, for a stream that is not a terminal (a log, CI): one at
    each quarter of a known total, one when it is done. tqdm's bar would leave a line per
    refresh there."""

    def __init__(self, label: str, total: int | None, stream: TextIO, unit: str = "bytes"):
        self.label, self.total, self.stream, self.unit = label, total, stream, unit
        self.received, self.quarters = 0, 0
        self.start = time.monotonic()

    def __enter__(self) -> ProgressLines:
        return self

    def update(self, count: int) -> None:
        self.received += count
        if not self.total:
            return
        quarters = min(3, self.received * 4 // self.total)
        if quarters > self.quarters:
            self.quarters = quarters
            self._line(f"{quarters * 25}% of {self.total:,} {self.unit}")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:  # a failed download is reported by its error, not here
            elapsed = time.monotonic() - self.start
            self._line(f"{self.received:,} {self.unit} in {elapsed:.1f} s")

    def _line(self, text: str) -> None:
        print(f"{self.label}: {text}", file=self.stream, flush=True)


class NoProgress:
    def __enter__(self) -> NoProgress:
        return self

    def update(self, count: int) -> None:
        pass

    def __exit__(self, *exception: object) -> None:
        pass


def progress(label: str, total: int | None, enabled: bool, stream: TextIO | None = None,
             unit: str = "bytes") -> tqdm | ProgressLines | NoProgress:
    """What shows progress through ``total`` ``unit`` on ``stream`` (default stderr), a
    context manager with ``update(count)``: a tqdm bar on a terminal, :class:`ProgressLines`
    elsewhere, nothing unless ``enabled``."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return NoProgress()
    if not stream.isatty():
        return ProgressLines(label, total, stream, unit)
    if unit == "bytes":
        return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                    file=stream, leave=False)
    return tqdm(total=total, unit=unit, desc=label, file=stream, leave=False, mininterval=1.0)
