"""The Keras models: the network, its augmentation, and the model that evaluate and predict load.

Two models, one set of weights:

* the **network** (:func:`build_network`) maps images in [0, 1], shape (N, 28, 28), to softmax
  probabilities (N, 10). It is what training sees: the prepared arrays are already in [0, 1],
  so the training loop never rescales anything.
* the **exported model** (:func:`export_model`) is ``Rescaling(1/255)`` followed by that same
  network, so it takes raw pixel values 0..255 (white digit on black, as MNIST) as float32
  (N, 28, 28). This is the file in ``models/model.keras``: whoever loads it (evaluate,
  ``mnist-pipeline predict``) feeds pixels and needs to know nothing about normalization.

With ``model.test_time_shifts`` the exported model also averages the network over one-pixel
shifts of the digit (test-time augmentation), built from layers as well; and it divides the
network's logits by the calibration temperature that the train stage fits after training
(:mod:`mnist_pipeline.calibration`), so that its probabilities mean what they say.

The train stage saves it with :func:`mnist_pipeline.model_file.save_model` (atomic, the same
bytes for the same weights); evaluate, predict and serve load and run it through
:mod:`mnist_pipeline.inference`, so they cannot disagree. It uses built-in layers only (no
Lambda, no custom objects), so it loads with ``safe_mode=True``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from mnist_pipeline import uncertainty
from mnist_pipeline.params import AugmentationParams, ModelParams
from mnist_pipeline.prepared import IMAGE_SHAPE, NUM_CLASSES, PIXEL_MAX, PIXEL_SCALE

LOGITS_LAYER = "logits"  # the network's last Dense: its output before the softmax


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
    # The logits have a layer of their own, so that export_model can divide them by the
    # calibration temperature before the softmax.
    logits = layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(x)
    outputs = layers.Activation("softmax", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"{config.architecture}_network")


def logits_network(network: keras.Model) -> keras.Model:
    """The part of ``network`` (from :func:`build_network`) before its softmax: images in
    [0, 1] (N, 28, 28) -> logits (N, 10). Shares the weights, copies nothing."""
    return keras.Model(network.inputs, network.get_layer(LOGITS_LAYER).output,
                       name=f"{network.name}_logits")


def _normalized_relu(layer: layers.Layer, x, batch_norm: bool, name: str):
    """``layer`` -> (batch norm) -> relu; the bias is redundant before batch norm."""
    x = layer(x)
    if batch_norm:
        # momentum 0.9, not Keras's 0.99: with a few dozen steps an epoch (mnist-sample) the
        # moving statistics otherwise lag so far behind that validation scores ~10% at first.
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def build_augmentation(config: AugmentationParams, seed: int) -> keras.Sequential | None:
    """Random rotation, translation and zoom of (N, 28, 28) images, or None when all are 0.

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
    return keras.Sequential(
        [keras.Input(shape=IMAGE_SHAPE), layers.Reshape((*IMAGE_SHAPE, 1)), *transforms,
         layers.Reshape(IMAGE_SHAPE)],
        name="augmentation",
    )


# The one-pixel moves (rows down, columns right) that `model.test_time_shifts` averages over.
SHIFTS = {
    0: (),
    4: ((1, 0), (-1, 0), (0, 1), (0, -1)),
    8: ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)),
}


def export_model(network: keras.Model, test_time_shifts: int = 0,
                 temperature: float = 1.0,
                 min_confidence: float = uncertainty.MIN_CONFIDENCE) -> keras.Model:
    """Wrap ``network`` (trained on [0, 1]) into the model that takes raw pixels 0..255.

    The two share weights: no copy, no retraining. Input float32 (N, 28, 28) pixel values,
    output softmax probabilities (N, 10). With ``test_time_shifts`` 4 or 8 (test-time
    augmentation), the output is the mean of the network's probabilities for the digit and
    for its copies moved one pixel in each direction of :data:`SHIFTS`, black moved in: the
    shifts are padding and cropping layers inside the saved model, so every user of the file
    (evaluate, predict, serve, TF Serving) gets the same averaged answer, and it still loads
    in safe mode.

    ``temperature`` (calibration, see :mod:`mnist_pipeline.calibration`) divides the logits
    of the digit and of each copy before their softmax (a ``Rescaling(1 / temperature)``
    layer): above 1 the probabilities soften, below 1 they sharpen, and no label changes.

    ``min_confidence`` (the model's ``uncertain`` threshold, fitted with the temperature) rides
    in the model as the negative slope of a last ``LeakyReLU`` layer named
    :data:`mnist_pipeline.uncertainty.THRESHOLD_LAYER`: probabilities are never negative, so
    that layer is the identity (no answer and no gradient changes), it is a built-in layer
    (safe mode, no custom object), and whoever loads the file reads the value from its config
    (:func:`mnist_pipeline.inference.load`; the export stage copies it into the ONNX model's
    metadata).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < min_confidence < 1:
        raise ValueError(f"min_confidence must be in (0, 1), got {min_confidence}")
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    scaled = layers.Rescaling(PIXEL_SCALE, name="pixels_to_unit")(inputs)
    logits = logits_network(network)
    # one layer each, applied to every copy: the model holds one temperature
    calibrate = layers.Rescaling(1.0 / temperature, name="temperature")
    softmax = layers.Activation("softmax", name="calibrated_probabilities")
    probabilities = [softmax(calibrate(logits(copy)))
                     for copy in shifted_copies(scaled, test_time_shifts)]
    if len(probabilities) > 1:
        probabilities = [layers.Average(name="mean_probabilities")(probabilities)]
    outputs = layers.LeakyReLU(negative_slope=min_confidence,
                               name=uncertainty.THRESHOLD_LAYER)(probabilities[0])
    return keras.Model(inputs, outputs, name="mnist_classifier")


def export_logits(network: keras.Model, test_time_shifts: int = 0) -> keras.Model:
    """Pixels 0..255 (N, 28, 28) -> the logits (N, 10) of the digit and of each shifted copy
    that :func:`export_model` averages (1 + ``test_time_shifts`` outputs, in that order):
    what the temperature is fitted on. Not saved; shares the weights."""
    inputs = keras.Input(shape=IMAGE_SHAPE, name="pixels")
    scaled = layers.Rescaling(PIXEL_SCALE, name="pixels_to_unit")(inputs)
    logits = logits_network(network)
    return keras.Model(inputs, [logits(copy) for copy in shifted_copies(scaled, test_time_shifts)],
                       name="mnist_logits")


def shifted_copies(images, test_time_shifts: int) -> list:
    """The image tensor (N, 28, 28) and its copies moved by each of ``SHIFTS[test_time_shifts]``
    (one pixel, black moved in), as layers."""
    if test_time_shifts not in SHIFTS:
        raise ValueError(f"test_time_shifts must be one of {sorted(SHIFTS)}, "
                         f"got {test_time_shifts}")
    if not test_time_shifts:
        return [images]
    # pad 1 px of black all round, then crop 28x28 out of the 30x30 at the shifted offset
    padded = layers.ZeroPadding2D(1, name="pad_1px")(
        layers.Reshape((*IMAGE_SHAPE, 1), name="add_channel")(images))
    copies = [images]
    for rows, columns in SHIFTS[test_time_shifts]:
        name = _shift_name(rows, columns)
        moved = layers.Cropping2D(((1 - rows, 1 + rows), (1 - columns, 1 + columns)),
                                  name=f"{name}_crop")(padded)
        copies.append(layers.Reshape(IMAGE_SHAPE, name=name)(moved))
    return copies


def _shift_name(rows: int, columns: int) -> str:
    """``shift_down``, ``shift_up_left``, ... for a one-pixel move."""
    parts = [{1: "down", -1: "up"}.get(rows), {1: "right", -1: "left"}.get(columns)]
    return "_".join(["shift", *(part for part in parts if part)])


def to_pixels(images: np.ndarray) -> np.ndarray:
    """Prepared [0, 1] images back to the pixel values 0..255 they were made from (float32).

    Rounding makes the round trip exact for images that were ``uint8 / 255``.
    """
    return np.rint(np.asarray(images, dtype=np.float32) * PIXEL_MAX).astype(np.float32)
