"""Training: tf.data input pipelines, optimizer and learning-rate schedule, the fit loop.

The network trains on the prepared [0, 1] images; :func:`mnist_pipeline.model.export_model`
adds the pixel scaling afterwards. Labels go in one-hot so that label smoothing works
(Keras's sparse cross-entropy has no ``label_smoothing``); ``"accuracy"`` then resolves to
categorical accuracy, and the logs keep the names ``loss``/``accuracy``/``val_loss``/
``val_accuracy`` that dvclive turns into ``train/*.tsv`` and ``eval/*.tsv``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from mnist_pipeline.model import build_augmentation
from mnist_pipeline.params import TrainParams
from mnist_pipeline.prepared import NUM_CLASSES

SGD_MOMENTUM = 0.9  # plain SGD without momentum is needlessly slow; not worth a param


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and ask TF for deterministic kernels.

    With this, the same seed on the same machine gives the same weights and metrics.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    augmentation: keras.Model | None = None,
) -> tf.data.Dataset:
    """Batches of (images, one-hot labels) from in-memory arrays.

    ``shuffle_seed`` reshuffles every epoch, reproducibly; ``augmentation`` (a Keras model on
    (B, 28, 28) batches) runs after batching, on training data only.
    """
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(images, np.float32), one_hot))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augmentation is not None:
        # Sequential map: the random layers carry state, and op determinism would serialize
        # a parallel map anyway; prefetch still overlaps it with training.
        dataset = dataset.map(lambda x, y: (augmentation(x, training=True), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


def learning_rate(config: TrainParams, steps_per_epoch: int):
    """A float (``constant``) or a cosine-decay schedule over all training steps.

    ``warmup_cosine`` rises linearly from 0 to ``learning_rate`` over ``warmup_epochs``,
    then follows a cosine down to 0 at the last step of ``epochs``. ``cosine_restarts``
    (SGDR, warm restarts) splits the steps into ``lr_cycles`` equal cycles, each a cosine
    from ``learning_rate`` down to 0, without warmup.
    """
    if config.lr_schedule == "constant":
        return config.learning_rate
    total_steps = config.epochs * steps_per_epoch
    if config.lr_schedule == "cosine_restarts":
        # t_mul=1: equal cycles (Keras's default, 2.0, doubles each cycle's length)
        return keras.optimizers.schedules.CosineDecayRestarts(
            config.learning_rate, first_decay_steps=total_steps / config.lr_cycles, t_mul=1.0)
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=config.learning_rate,
        warmup_steps=warmup_steps,
    )


def make_optimizer(config: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam, AdamW (with ``weight_decay``) or SGD with Nesterov momentum; with
    ``ema_momentum`` > 0, it also keeps a moving average of the weights (see :func:`train`)."""
    rate = learning_rate(config, steps_per_epoch)
    ema = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {}
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=rate, **ema)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=config.weight_decay,
                                      **ema)
    # sgd, the one other value params.py allows
    return keras.optimizers.SGD(learning_rate=rate, momentum=SGD_MOMENTUM, nesterov=True, **ema)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """``SwapEMAWeights(swap_on_epoch=True)`` that also leaves the average in the model when
    fit stops before its last epoch (a callback's ``stop_training``): Keras's own callback
    only restores it after the last epoch, so the model would end with the raw weights."""

    def __init__(self):
        super().__init__(swap_on_epoch=True)
        self._average = None

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self._average = self.model.get_weights()  # the average: just swapped in

    def on_train_end(self, logs=None):
        if self._average is not None:
            self.model.set_weights(self._average)


def train(
    network: keras.Model,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    config: TrainParams,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
    strategy: tf.distribute.Strategy | None = None,
) -> keras.callbacks.History:
    """Compile and fit ``network`` in place on (images, labels) pairs in [0, 1] / 0..9.

    With ``early_stopping_patience`` > 0, training stops once ``val_accuracy`` has not improved
    for that many epochs and the best epoch's weights are restored. With ``ema_momentum`` > 0,
    "weights" means the moving average of the weights: it is what validation scores, what
    early stopping keeps, and what ``network`` holds at the end. Call
    :func:`set_determinism` before building the network for repeatable runs.

    With a ``strategy`` (see :func:`mnist_pipeline.distribute.make_strategy`), build
    ``network`` inside ``strategy.scope()``; the optimizer is created in that scope here.
    ``config.batch_size`` is the global batch: each step splits it across all replicas of all
    workers, and the learning rate (and its schedule, counted in global steps) is used as
    configured, not scaled by the number of replicas. Every worker must feed the same data
    and seed.
    """
    strategy = strategy or tf.distribute.get_strategy()
    train_images, train_labels = train_data
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    augmentation = build_augmentation(config.augmentation, seed)
    train_dataset = make_dataset(train_images, train_labels, config.batch_size,
                                 shuffle_seed=seed, augmentation=augmentation)
    val_dataset = make_dataset(*val_data, config.batch_size)

    with strategy.scope():
        network.compile(
            optimizer=make_optimizer(config, steps_per_epoch),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"],
        )
    all_callbacks = list(callbacks)
    if config.ema_momentum:
        # The averaged weights go in the model at each epoch end, so validation, the caller's
        # callbacks and early stopping's best weights all see them; training resumes on the
        # raw weights, and the model ends with the average. It must come first.
        all_callbacks.insert(0, AveragedWeights())
    if config.early_stopping_patience:
        all_callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.early_stopping_patience,
            restore_best_weights=True, verbose=1))
    return network.fit(train_dataset, validation_data=val_dataset, epochs=config.epochs,
                       callbacks=all_callbacks, verbose=verbose,
                       shuffle=False)  # the dataset shuffles itself


class EpochLines(keras.callbacks.Callback):
    """About ``lines`` lines of progress for the whole training (Keras's own verbose=2 prints
    two an epoch: 120 for `make sample`'s 60): every few epochs and the last, with the losses,
    the accuracies and the seconds an epoch took. Every epoch's values are in dvclive's
    plots."""

    def __init__(self, epochs: int, lines: int = 5, prefix: str = "train"):
        super().__init__()
        self.epochs, self.every, self.prefix = epochs, max(1, math.ceil(epochs / lines)), prefix
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if epoch and (epoch + 1) % self.every and epoch + 1 != self.epochs:
            return  # the first epoch always: a line early says the training runs
        values = ", ".join(f"{name} {value:.4f}" for name, value in sorted((logs or {}).items())
                           if name in ("loss", "accuracy", "val_loss", "val_accuracy"))
        print(f"{self.prefix}: epoch {epoch + 1}/{self.epochs}: {values} "
              f"({time.perf_counter() - self.started:.1f} s)", flush=True)


# What dvclive/metrics.json keeps of dvclive's summary: the validation accuracy of the last
# epoch and the fitted temperature. The losses and train accuracy are in the per-epoch plots.
HEADLINE_METRICS = (("eval", "accuracy"), ("temperature",), ("min_confidence",))


def headline_metrics(summary: dict) -> dict:
    """The :data:`HEADLINE_METRICS` of a dvclive summary, nested as they were."""
    kept: dict = {}
    for path in HEADLINE_METRICS:
        value: object = summary
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        target = kept
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return kept
