"""The network, its augmentation, and the saved model that evaluate and predict load.

Two models, one set of weights:

* the **network** (:func:`build_network`) maps images in [0, 1], shape (N, 28, 28), to softmax
  probabilities (N, 10). It is what training sees: the prepared arrays are already in [0, 1],
  so the training loop never rescales anything.
* the **exported model** (:func:`export_model`) is ``Rescaling(1/255)`` followed by that same
  network, so it takes raw pixel values 0..255 (white digit on black, as MNIST) as float32
  (N, 28, 28). This is the file in ``models/model.keras``: whoever loads it (evaluate,
  ``mnist-pipeline predict``) feeds pixels and needs to know nothing about normalization.

Evaluate and predict both go through :func:`load_model` and :func:`predict_probabilities`, so
they cannot disagree. The saved model uses built-in layers only (no Lambda, no custom
objects), so it loads with ``safe_mode=True``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from mnist_pipeline import fileio, paths
from mnist_pipeline.params import AugmentationParams, ModelParams
from mnist_pipeline.prepared import IMAGE_SHAPE, NUM_CLASSES, PIXEL_SCALE

PIXEL_MAX = 255.0
# Standard deviation (pixels) of the Gaussian that smooths elastic displacement fields: Simard
# et al.'s sigma for MNIST. Smaller gives jagged strokes; larger, a near-affine warp.
ELASTIC_SMOOTHING_PIXELS = 4.0


def build_network(config: ModelParams) -> keras.Model:
    """The classifier on [0, 1] images (N, 28, 28) -> softmax probabilities (N, 10).

    ``convnet``: per entry of ``conv_filters`` a block of ``convs_per_block`` (1 or 2) 3x3
    convolutions (each conv -> batch norm -> relu) and a 2x2 max-pool; then Flatten,
    Dense(dense_units), Dropout and the softmax layer. ``dense``: Flatten,
    Dense(dense_units), Dropout, softmax: the cheap baseline. Flatten rather than global
    average pooling because on 7x7 or 14x14 maps the position of a stroke is part of what
    makes a digit.
    """
    inputs = keras.Input(shape=IMAGE_SHAPE, name="image")
    if config.architecture == "convnet":
        x = layers.Reshape((*IMAGE_SHAPE, 1), name="add_channel")(inputs)
        for block, filters in enumerate(config.conv_filters, start=1):
            for index in range(1, config.convs_per_block + 1):
                x = _normalized_relu(
                    layers.Conv2D(filters, 3, padding="same", use_bias=not config.batch_norm,
                                  name=f"block{block}_conv{index}"),
                    x, config.batch_norm, f"block{block}_conv{index}")
            x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.Flatten(name="flatten")(inputs)
    x = _normalized_relu(layers.Dense(config.dense_units, use_bias=not config.batch_norm,
                                    name="hidden"), x, config.batch_norm, "hidden")
    x = layers.Dropout(config.dropout_rate, name="dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{config.architecture}_network")


def _normalized_relu(layer: layers.Layer, x, batch_norm: bool, name: str):
    """``layer`` -> (batch norm) -> relu; the bias is redundant before batch norm."""
    x = layer(x)
    if batch_norm:
        # momentum 0.9, not Keras's 0.99: with a few dozen steps an epoch (mnist-sample) the
        # moving statistics otherwise lag so far behind that validation scores ~10% at first.
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_augmentation(config: AugmentationParams, seed: int) -> keras.Sequential | None:
    """Random rotation, translation, zoom and elastic distortion of (N, 28, 28) images, or
    None when all are 0.

    Used on training batches only (see :mod:`mnist_pipeline.training`). Areas moved into view
    are filled with 0, the black background, rather than Keras's default reflection.
    """
    if not config.enabled:
        return None
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    transforms: list[layers.Layer] = []
    if config.rotation_degrees:
        transforms.append(layers.RandomRotation(config.rotation_degrees / 360.0, seed=seed,
                                                name="random_rotation", **fill))
    if config.translation_fraction:
        transforms.append(layers.RandomTranslation(
            config.translation_fraction, config.translation_fraction, seed=seed + 1,
            name="random_translation", **fill))
    if config.zoom_fraction:
        transforms.append(layers.RandomZoom(config.zoom_fraction, seed=seed + 2,
                                            name="random_zoom", **fill))
    if config.elastic_pixels:
        transforms.append(RandomElasticDistortion(config.elastic_pixels, seed=seed + 3,
                                                  name="random_elastic"))
    return keras.Sequential(
        [keras.Input(shape=IMAGE_SHAPE), layers.Reshape((*IMAGE_SHAPE, 1)), *transforms,
         layers.Reshape(IMAGE_SHAPE)],
        name="augmentation",
    )


class RandomElasticDistortion(layers.Layer):
    """Elastic distortion of (N, 28, 28, 1) images (Simard, Steinkraus & Platt, 2003).

    Per image, a displacement field of uniform noise in [-1, 1] per pixel and axis, smoothed
    by a Gaussian of :data:`ELASTIC_SMOOTHING_PIXELS` and scaled so that its root mean square
    displacement is ``pixels``; each output pixel is the bilinear interpolation of the input
    at its displaced position (0, the background, outside the image). The noise comes from a
    Keras seed generator: a fixed ``seed`` gives the same sequence of fields, a new one each
    call. Used on training batches only, in the tf.data pipeline (TensorFlow ops).
    """

    def __init__(self, pixels: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pixels = float(pixels)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        radius = int(2 * ELASTIC_SMOOTHING_PIXELS)
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / ELASTIC_SMOOTHING_PIXELS) ** 2)
        taps /= taps.sum()
        self._taps = taps.astype(np.float32)

    def _scale(self, height: int, width: int) -> np.ndarray:
        """(height, width, 1) factors that give every position an RMS displacement of
        ``pixels``: uniform noise in [-1, 1] has std 1/sqrt(3), and smoothing multiplies it by
        the L2 norm of the kernel taps that fall inside the image (fewer near the borders)."""
        def norms(size: int) -> np.ndarray:
            radius = len(self._taps) // 2
            inside = [self._taps[max(0, radius - i):radius + size - i] for i in range(size)]
            return np.sqrt([np.sum(part.astype(np.float64) ** 2) for part in inside])
        norm = norms(height)[:, None] * norms(width)[None, :]
        return (self.pixels * np.sqrt(3.0) / norm)[..., None].astype(np.float32)

    def displacements(self, batch_size, height: int, width: int):
        """A (batch, height, width, 2) field of (dy, dx) displacements in pixels."""
        noise = keras.random.uniform((batch_size, height, width, 2), -1.0, 1.0,
                                     seed=self.seed_generator)
        taps = tf.constant(self._taps)
        down = tf.tile(tf.reshape(taps, (-1, 1, 1, 1)), (1, 1, 2, 1))
        across = tf.tile(tf.reshape(taps, (1, -1, 1, 1)), (1, 1, 2, 1))
        smooth = tf.nn.depthwise_conv2d(noise, down, (1, 1, 1, 1), "SAME")
        smooth = tf.nn.depthwise_conv2d(smooth, across, (1, 1, 1, 1), "SAME")
        return smooth * self._scale(height, width)

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.convert_to_tensor(images)
        field = self.displacements(tf.shape(images)[0], images.shape[1], images.shape[2])
        return warp(images, field)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pixels": self.pixels, "seed": self.seed}


def warp(images, field):
    """Resample (N, H, W, 1) ``images``: output pixel (y, x) is the input at (y + dy, x + dx),
    ``field`` (N, H, W, 2) holding (dy, dx) in pixels; bilinear, 0 outside the image."""
    images = tf.convert_to_tensor(images, tf.float32)
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    # Pad one background pixel all around; positions outside clamp onto it.
    padded = tf.pad(images[..., 0], ((0, 0), (1, 1), (1, 1)))
    rows = tf.range(height, dtype=tf.float32)[None, :, None] + 1.0 + field[..., 0]
    cols = tf.range(width, dtype=tf.float32)[None, None, :] + 1.0 + field[..., 1]
    rows = tf.clip_by_value(rows, 0.0, float(height + 1))
    cols = tf.clip_by_value(cols, 0.0, float(width + 1))
    top = tf.minimum(tf.floor(rows), float(height))
    left = tf.minimum(tf.floor(cols), float(width))
    down, right = rows - top, cols - left
    flat = tf.reshape(padded, (-1,))
    base = tf.range(batch)[:, None, None] * ((height + 2) * (width + 2))

    def pixel(row, col):
        return tf.gather(flat, base + tf.cast(row, tf.int32) * (width + 2) + tf.cast(col, tf.int32))

    warped = ((1 - down) * ((1 - right) * pixel(top, left) + right * pixel(top, left + 1))
              + down * ((1 - right) * pixel(top + 1, left) + right * pixel(top + 1, left + 1)))
    return warped[..., None]


def export_model(network: keras.Model) -> keras.Model:
    """Wrap ``network`` (trained on [0, 1]) into the model that takes raw pixels 0..255.

    The two share weights: no copy, no retraining. Input float32 (N, 28, 28) pixel values,
    output softmax probabilities (N, 10).
    """
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    scaled = layers.Rescaling(PIXEL_SCALE, name="pixels_to_unit")(inputs)
    return keras.Model(inputs, network(scaled), name="mnist_classifier")


def save_model(model: keras.Model, target: str | Path = paths.MODEL_FILE) -> None:
    """Save atomically: a crash never leaves a half-written ``target``.

    Keras insists on the ``.keras`` suffix, so the model is written to a ``.keras`` file beside
    the temporary path that :func:`mnist_pipeline.fileio.atomic_path` renames into place (both
    names match the `.gitignore` patterns for temporaries, should a kill leave them behind).
    Equal weights give equal bytes (:func:`without_save_times`), so a retrain that changes
    nothing changes no hash and reruns nothing downstream.
    """
    with fileio.atomic_path(target) as temporary:
        staged = temporary.with_name(temporary.name + ".keras")
        try:
            model.save(staged)
            without_save_times(staged)
            os.replace(staged, temporary)
        finally:
            staged.unlink(missing_ok=True)


# The earliest time a zip entry can hold (as `SOURCE_DATE_EPOCH` tools write).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def without_save_times(archive: str | Path) -> None:
    """Rewrite a ``.keras`` zip without the times Keras stamps on it, in place.

    Keras writes the save date into metadata.json (``date_saved``) and the file time onto the
    weights entry; everything else (config, HDF5 weights) is already a function of the model.
    """
    with zipfile.ZipFile(archive) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(archive, "w") as rewritten:
        for info, data in members:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            entry.compress_type, entry.external_attr = info.compress_type, info.external_attr
            rewritten.writestr(entry, data)


def load_model(path: str | Path = paths.MODEL_FILE) -> keras.Model:
    """Load the exported model (safe mode: no arbitrary code) and check its input and output.

    Raises FileNotFoundError or ValueError with a one-line message naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `dvc repro train` first")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a bad file; all mean the same
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a loadable Keras model ({reason})") from None
    input_shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    output_shape = tuple(model.outputs[0].shape[1:]) if getattr(model, "outputs", None) else None
    if input_shape != IMAGE_SHAPE or output_shape != (NUM_CLASSES,):
        raise ValueError(f"{path}: expected a model from (N, 28, 28) pixels to (N, 10) "
                         f"probabilities, got {input_shape} -> {output_shape}")
    return model


def predict_probabilities(model: keras.Model, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (N, 10) float32 for raw pixels (N, 28, 28) in 0..255, in batches."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected pixels of shape (N, 28, 28), got {pixels.shape}")
    if len(pixels) == 0:
        return np.zeros((0, NUM_CLASSES), dtype=np.float32)
    if len(pixels) <= batch_size:
        # One direct call skips building predict()'s tf.function: much faster for a few images.
        return np.asarray(model(pixels, training=False), dtype=np.float32)
    return np.asarray(model.predict(pixels, batch_size=batch_size, verbose=0), dtype=np.float32)


def to_pixels(images: np.ndarray) -> np.ndarray:
    """Prepared [0, 1] images back to the pixel values 0..255 they were made from (float32).

    Rounding makes the round trip exact for images that were ``uint8 / 255``.
    """
    return np.rint(np.asarray(images, dtype=np.float32) * PIXEL_MAX).astype(np.float32)
