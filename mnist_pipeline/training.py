"""Training: tf.data input pipelines, optimizer and learning-rate schedule, the fit loop.

The network trains on the prepared [0, 1] images; :func:`mnist_pipeline.model.export_model`
adds the pixel scaling afterwards. Labels go in one-hot so that label smoothing works
(Keras's sparse cross-entropy has no ``label_smoothing``); ``"accuracy"`` then resolves to
categorical accuracy, and the logs keep the names ``loss``/``accuracy``/``val_loss``/
``val_accuracy`` that dvclive turns into ``train/*.tsv`` and ``eval/*.tsv``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mnist_pipeline.model import build_augmentation
from mnist_pipeline.params import TrainParams
from mnist_pipeline.prepared import NUM_CLASSES

SGD_MOMENTUM = 0.9  # plain SGD without momentum is needlessly slow; not worth a param

# multi_worker: a collective (gradient all-reduce) that has not completed after this many
# seconds fails with DeadlineExceeded instead of waiting forever for a dead peer. Generous:
# one step of this model takes well under a second, the first one (graph building) a few.
COLLECTIVE_TIMEOUT_SECONDS = 60


# What a collective raises when a peer dies or stops answering: its connection resets
# (Unavailable), the collective times out (DeadlineExceeded) or is aborted/cancelled.
CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                  tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError,
                  tf.errors.UnknownError, tf.errors.FailedPreconditionError)


def describe_cluster_failure(error: Exception) -> str:
    """One short message for a multi-worker run that lost a peer."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()
             and not line.strip().startswith(("Graph execution", "Detected at node", "File "))]
    # TF wraps the cause ("Collective ops is aborted by: ... Connection reset by peer") in
    # "Graph execution error:" and a Python trace of where the node was defined.
    causes = [line for line in lines if any(word in line.lower() for word in (
        "collective", "peer", "deadline", "timed out", "unavailable", "heartbeat"))]
    first_line = (causes or lines or [type(error).__name__])[0]
    return (f"train: multi-worker training stopped: a worker of the cluster failed or is "
            f"unreachable ({type(error).__name__}: {first_line.strip()}); no model was saved: "
            f"restart every worker.")


class DistributeError(RuntimeError):
    """TF_CONFIG is missing or malformed for ``train.distribute: multi_worker``."""


def parse_tf_config(raw: str | None) -> dict | None:
    """The TF_CONFIG JSON as a dict (None when unset or empty); DistributeError if malformed."""
    if raw is None or not raw.strip():
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DistributeError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise DistributeError('TF_CONFIG: expected {"cluster": {...}, "task": {...}}')
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError('TF_CONFIG: "task" needs a "type" and an "index"')
    jobs = config["cluster"]
    if task["type"] not in jobs or not 0 <= int(task["index"]) < len(jobs[task["type"]]):
        raise DistributeError(f"TF_CONFIG: task {task} is not in the cluster {jobs}")
    return config


def is_chief(tf_config: Mapping | None) -> bool:
    """Whether this process writes the outputs: the ``chief`` task, else ``worker`` 0.

    Without TF_CONFIG (a single process) the process is its own chief.
    """
    if not tf_config:
        return True
    task = tf_config.get("task", {})
    task_type, index = task.get("type"), int(task.get("index", 0))
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {})


def make_strategy(distribute: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for ``train.distribute`` (see :class:`TrainParams`).

    Call it before any other TensorFlow work (multi_worker starts a gRPC server and must
    configure the runtime first). ``multi_worker`` reads the cluster from TF_CONFIG.
    """
    if distribute == "none":
        return tf.distribute.get_strategy()  # the default: one device, no replication
    if distribute == "mirrored":
        # All local GPUs; with none, MirroredStrategy falls back to the CPU (one replica).
        return tf.distribute.MirroredStrategy()
    # multi_worker, the one other value params.py allows
    if parse_tf_config(os.environ.get("TF_CONFIG")) is None:
        raise DistributeError("train.distribute is multi_worker but TF_CONFIG is not set; "
                              "see README, 'Train on several machines'")
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS,
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    return _MultiWorkerStrategy(communication_options=options)


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with the two ``reduce`` calls Keras 3's ``fit`` makes fixed.

    Keras 3.15 fails with this strategy (keras-team/keras#20585): it reduces the first
    (x, y) batch in one call, which the strategy refuses ("Attempt to convert a value
    (PerReplica...)"), and it reduces the scalar loss and metrics of each step over
    ``axis=0`` ("Invalid reduction dimension 0 for input with 0 dimensions"). This reduces
    nested values one by one, and scalars across replicas (``axis=None``), as
    MirroredStrategy does.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_one(item):
            local = (self.experimental_local_results(item)[0]
                     if isinstance(item, tf.distribute.DistributedValues) else item)
            scalar = getattr(getattr(local, "shape", None), "rank", None) == 0
            return parent.reduce(reduce_op, item, None if scalar else axis)

        return tf.nest.map_structure(reduce_one, value)


@contextlib.contextmanager
def model_destination(target: Path, chief: bool) -> Iterator[Path]:
    """Where this worker saves the model: ``target`` on the chief, else a temporary file.

    Every worker must call ``save`` (in multi-worker training saving may run collectives);
    the non-chief ones write outside the repository, into a folder deleted afterwards.
    """
    if chief:
        yield Path(target)
        return
    scratch = Path(tempfile.mkdtemp(prefix="mnist-worker-model-"))
    try:
        yield scratch / Path(target).name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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

    With a ``strategy`` (see :func:`make_strategy`), build ``network`` inside
    ``strategy.scope()``; the optimizer is created in that scope here. ``config.batch_size``
    is the global batch: each step splits it across all replicas of all workers, and the
    learning rate (and its schedule, counted in global steps) is used as configured, not
    scaled by the number of replicas. Every worker must feed the same data and seed.
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
