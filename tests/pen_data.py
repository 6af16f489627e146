"""Small UNIPEN pen-digit files built by the tests (a user's clone has no pen file).

Each digit is one of ten hand-made stroke templates in tablet units (a 500x500 box, y up, as
UCI's writers drew), moved and jittered per writer and digit, so that files of any size and
writer count can be made, written as UCI writes them, and compressed as UCI serves them.
"""

from __future__ import annotations

import hashlib
import io
import zipfile

import ncompress
import numpy as np

from mnist_pipeline.pendigits import PenFile


def _arc(cx, cy, rx, ry, start, end, points=9):
    angles = np.radians(np.linspace(start, end, points))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]


# Strokes of each digit, tablet units, y up (several of the styles MNIST's writers rarely use:
# a crossed 7, a 1 with a flag, an open 4).
TEMPLATES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc(250, 250, 90, 140, 90, 450, 13)],
    1: [[(200, 330), (260, 400), (260, 100)]],
    2: [_arc(250, 320, 80, 70, 160, -30, 7) + [(170, 110), (340, 110)]],
    3: [_arc(240, 330, 80, 65, 150, -90, 7) + _arc(240, 180, 90, 85, 90, -150, 7)],
    4: [[(250, 400), (160, 220), (330, 220)], [(290, 330), (290, 100)]],
    5: [[(320, 400), (190, 400), (180, 270)] + _arc(240, 190, 90, 85, 120, -160, 8)],
    6: [[(300, 400), (200, 280)] + _arc(250, 180, 80, 80, 180, 540, 11)],
    7: [[(150, 400), (350, 400), (220, 100)], [(180, 250), (320, 250)]],
    8: [_arc(250, 320, 65, 70, -90, 270, 10) + _arc(250, 170, 80, 80, 90, 450, 10)],
    9: [_arc(250, 310, 80, 80, 0, 360, 10) + [(330, 310), (300, 100)]],
}


def strokes_of(label: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Template ``label`` moved, scaled and jittered a little: integer tablet units."""
    scale = rng.uniform(0.8, 1.1)
    offset = rng.uniform(-30, 30, 2)
    return [np.round(np.asarray(stroke) * scale + offset + rng.normal(0, 3, (len(stroke), 2)))
            for stroke in TEMPLATES[label]]


def unipen(digits: list[tuple[int, int, list[np.ndarray]]]) -> str:
    """UNIPEN text, as in UCI's files, of (label, writer, strokes) digits."""
    lines = ['.INCLUDE        dene.doc', "", '.LEXICON "0" "1" "2" "3" "4" "5" "6" "7" "8" "9"',
             ".HIERARCHY      DIGIT", ""]
    for number, (label, writer, strokes) in enumerate(digits):
        lines += [f'.SEGMENT DIGIT {number:4d} ? "{label}"',
                  f".COMMENT {label} {writer:2d} {number:4d}"]
        for stroke in strokes:
            lines.append(".PEN_DOWN")
            lines += [f" {int(x):3d}  {int(y):3d}" for x, y in stroke]
            lines += [".PEN_UP", ".DT 100"]
        lines.append("")
    return "\n".join(lines) + "\n"


def pen_text(writers: range, per_writer: int, seed: int) -> str:
    """A file of ``per_writer`` digits (labels in turn) by each of ``writers``."""
    rng = np.random.default_rng(seed)
    return unipen([(index % 10, writer, strokes_of(index % 10, rng))
                   for writer in writers for index in range(per_writer)])


def spec(name: str, content: bytes, split: str, digits: int, writers: int) -> PenFile:
    """A PenFile describing ``content`` (its own digest), for the download code."""
    return PenFile(name, hashlib.sha256(content).hexdigest(), len(content), split, digits,
                   writers)


def uci_zip(members: dict[str, bytes]) -> bytes:
    """A zip as UCI serves it: each file as a ``compress`` (.Z) member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name + ".Z", ncompress.compress(content))
        archive.writestr("pendigits.names", "a description\n")
    return buffer.getvalue()
