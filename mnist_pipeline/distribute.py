"""tf.distribute for ``train.distribute``: the strategy, TF_CONFIG and the chief, lost peers.

``none`` trains in this process on one device, ``mirrored`` on all local GPUs, and
``multi_worker`` on a cluster of processes (one per machine) that TF_CONFIG describes. In a
cluster every worker runs the same training; only the chief writes the outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

# multi_worker: a collective (gradient all-reduce) that has not completed after this many
# seconds fails with DeadlineExceeded instead of waiting forever for a dead peer. Generous:
# one training step is short next to it, even the first one, which builds the graph.
COLLECTIVE_TIMEOUT_SECONDS = 60

# What a collective raises when a peer dies or stops answering: its connection resets
# (Unavailable), the collective times out (DeadlineExceeded) or is aborted/cancelled.
CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                  tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError,
                  tf.errors.UnknownError, tf.errors.FailedPreconditionError)


class DistributeError(RuntimeError):
    """TF_CONFIG is missing or malformed for ``train.distribute: multi_worker``."""


@dataclass(frozen=True)
class Worker:
    """This process's part in a training run: one worker of a ``multi_worker`` cluster or the
    only one, and whether it is the chief, the one that writes the outputs."""

    multi_worker: bool = False
    chief: bool = True

    def __str__(self) -> str:
        return "chief" if self.chief else "non-chief worker: writes no outputs"


def this_worker(distribute: str) -> Worker:
    """The :class:`Worker` this process is for ``train.distribute``: for ``multi_worker`` the
    task in TF_CONFIG (DistributeError if malformed), else the one worker, its own chief."""
    if distribute != "multi_worker":
        return Worker()
    return Worker(multi_worker=True, chief=is_chief(parse_tf_config(os.environ.get("TF_CONFIG"))))


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
    """The tf.distribute strategy for ``train.distribute`` (see ``params.TrainParams``).

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
