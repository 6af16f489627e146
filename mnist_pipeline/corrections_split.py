"""A round of corrections as the pipeline learns and scores it (the read_corrections stage).

The folders of labelled pictures that ``corrections.folders`` names (under data/extra/) are
read as any picture sent to the model is (:mod:`mnist_pipeline.labelled`), then split by
time: each writer's latest pictures are held out as the ``extra`` test source and the earlier
ones are learned by the finetune stage, so the score answers the question a person who
corrected the page asks: does it read my next digit now?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_pipeline import labelled, paths
from mnist_pipeline.prepared import normalize

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CorrectionSplits:
    """The pictures to learn and the held-out latest ones: (float32 images in [0, 1], uint8
    labels) each, and what was read (:meth:`summary`)."""

    learn: Split
    test: Split
    folders: tuple[str, ...]
    writers: int
    writers_tested: int

    def summary(self) -> dict[str, Any]:
        """metrics/corrections.json: how many pictures and writers were read, learned, held
        out."""
        return {"folders": len(self.folders), "writers": self.writers,
                "pictures": int(len(self.learn[1]) + len(self.test[1])),
                "learned": int(len(self.learn[1])), "held_out": int(len(self.test[1])),
                "writers_held_out": self.writers_tested}


def read_folders(folders: Sequence[str], root: str | Path = paths.EXTRA_DIR
                 ) -> labelled.LabelledPictures:
    """The labelled pictures of ``folders`` (names under ``root``), one after the other.
    LabelledFolderError names the folder, the row and the problem."""
    read = [labelled.read_folder(Path(root) / folder) for folder in folders]
    if not read:
        return labelled.LabelledPictures(np.zeros((0, 28, 28), np.uint8),
                                          np.zeros(0, np.uint8), (), ())
    return labelled.LabelledPictures(
        np.concatenate([part.images for part in read]),
        np.concatenate([part.labels for part in read]),
        tuple(writer for part in read for writer in part.writers),
        tuple(time for part in read for time in part.times))


def split_corrections(pictures: labelled.LabelledPictures, folders: Sequence[str],
                      test_fraction: float) -> CorrectionSplits:
    """``pictures`` split by time (:func:`labelled.split_by_time`) and normalized."""
    parts = labelled.split_by_time(pictures.writers, pictures.times, test_fraction)
    images = normalize(pictures.images)
    tested = {pictures.writers[index] for index in parts["test"]}
    return CorrectionSplits(
        learn=(images[parts["train"]], pictures.labels[parts["train"]]),
        test=(images[parts["test"]], pictures.labels[parts["test"]]),
        folders=tuple(folders), writers=len(set(pictures.writers)),
        writers_tested=len(tested))
