"""The prepared arrays: the data contract between preprocess, which writes them, and train,
evaluate and plot, which read them (numpy only, no TensorFlow).

Per split (``train``, ``val``, ``test``), two files under ``data/prepared/``:

* ``<split>_images.npy``: float32 (N, 28, 28), finite, in [0, 1]: uint8 pixels times
  :data:`PIXEL_SCALE`;
* ``<split>_labels.npy``: uint8 (N,), classes 0 .. :data:`NUM_CLASSES` - 1.

:func:`save` checks an array against the contract before writing it and :func:`load` checks
what it reads, so a stage never trains on, scores or draws arrays of another shape or scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_pipeline import fileio, paths

# The image geometry and pixel scale of the whole project (MNIST's): every module that needs
# them imports them from here.
NUM_CLASSES = 10
IMAGE_SIZE = 28  # pixels a side
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE)
PIXEL_MAX = 255  # raw pixels are whole numbers 0..PIXEL_MAX (uint8), light digit on dark

# The one pixel scaling of the project. The model applies it to raw input as
# `keras.layers.Rescaling(PIXEL_SCALE)`, which computes `float32(x) * float32(scale)`;
# preprocess multiplies the same way (not `x / 255`, which differs in the last bit for
# some of the 256 values), so prepared arrays and raw input give identical tensors.
PIXEL_SCALE = 1 / PIXEL_MAX

# The test sources besides the dataset (named after itself): the pen-drawn digits and the
# labelled pictures of corrections.folders. Each is scored on a test split of its own.
DRAWN_SOURCE = "drawn"
EXTRA_SOURCE = "extra"


def test_split(source: str | None) -> str:
    """The prepared split holding ``source``'s test digits: "test" for the dataset (None or
    its name), "test_<source>" for :data:`DRAWN_SOURCE` and :data:`EXTRA_SOURCE`."""
    return f"test_{source}" if source in (DRAWN_SOURCE, EXTRA_SOURCE) else "test"


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 (any shape) -> float32 in [0, 1], i.e. ``x * float32(1/255)``.

    Only uint8 is accepted, so already-normalized floats cannot be scaled twice.
    """
    if images.dtype != np.uint8:
        raise ValueError(f"normalize expects uint8 pixels 0..255, got {images.dtype}")
    return images.astype(np.float32) * np.float32(PIXEL_SCALE)


def check_normalized_images(images: np.ndarray, name: str) -> None:
    """Raise ValueError (naming ``name``) unless ``images`` are finite float32 (N, 28, 28) in
    [0, 1]."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{name}: expected images of shape (N, 28, 28), got {images.shape}")
    if images.dtype != np.float32:
        raise ValueError(f"{name}: expected float32 images in [0, 1], got dtype {images.dtype}")
    if images.size and not np.isfinite(images).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"{name}: values outside [0, 1] (min {images.min():g}, "
                         f"max {images.max():g}); expected pixels / 255")


def check_labels(labels: np.ndarray, name: str, num_classes: int = NUM_CLASSES) -> None:
    """Raise ValueError (naming ``name``) unless ``labels`` is an integer vector of classes
    0 .. num_classes - 1. The one label check of the project (IDX files, prepared arrays,
    metrics)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{name}: expected an integer vector of labels, got "
                         f"{labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name}: labels outside 0..{num_classes - 1} "
                         f"(min {labels.min()}, max {labels.max()})")


def save(split: str, images: np.ndarray, labels: np.ndarray,
         folder: Path = paths.PREPARED_DIR) -> None:
    """Check one split against the contract, then write its two files (in ``folder``)
    atomically."""
    images_path = paths.prepared_images(split, folder)
    labels_path = paths.prepared_labels(split, folder)
    check_normalized_images(images, str(images_path))
    check_labels(labels, str(labels_path))
    if labels.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(f"{labels_path}: expected {len(images)} uint8 labels, got "
                         f"{len(labels)} {labels.dtype}")
    fileio.save_npy(images_path, images)
    fileio.save_npy(labels_path, labels)


def load(split: str, folder: Path = paths.PREPARED_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 28, 28) float32 in [0, 1] and int64 labels (N,) of ``split`` (in
    ``folder``), checked.

    Raises FileNotFoundError / ValueError naming the offending file: missing or corrupt
    arrays, wrong shapes or dtypes, NaNs or values outside [0, 1], labels outside 0..9, an
    empty split, or image and label counts that differ.
    """
    images_path = paths.prepared_images(split, folder)
    labels_path = paths.prepared_labels(split, folder)
    images, labels = fileio.load_npy(images_path), fileio.load_npy(labels_path)
    check_normalized_images(images, str(images_path))
    check_labels(labels, str(labels_path))
    if len(images) == 0:
        raise ValueError(f"{images_path}: no images in the {split} split")
    if len(images) != len(labels):
        raise ValueError(f"{labels_path}: {len(labels)} labels for {len(images)} images "
                         f"in {images_path}")
    return images, labels.astype(np.int64)


def read_sources(path: str | Path = paths.PREPARED_SOURCES) -> dict[str, str]:
    """{source: prepared test split} from preprocess's sources.json, the dataset (whose
    split is "test") first.

    FileNotFoundError (pointing at `dvc repro preprocess`) when missing; ValueError naming
    the file when it is not a mapping of names to split names with one "test" split."""
    path = Path(path)
    try:
        sources = fileio.read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; run `dvc repro preprocess` first") from None
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if (not isinstance(sources, dict) or list(sources.values()).count("test") != 1
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items())):
        raise ValueError(f"{path}: expected {{source: split}} names with one \"test\" split; "
                         "run `dvc repro preprocess` again")
    return dict(sorted(sources.items(), key=lambda item: item[1] != "test"))
