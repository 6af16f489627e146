"""Run a trained model file: ``.onnx`` on onnxruntime, ``.keras`` on Keras. One path for all.

Evaluate, ``mnist-pipeline predict`` and ``mnist-pipeline serve`` load and run the model here,
so they cannot disagree. The contract of every model file of this project:

    pixels  float32 (N, 28, 28), raw values 0..255, light digit on black (MNIST-style)
    output  float32 (N, 10), the probabilities of the digits 0-9

The scaling, the test-time shifts and the calibration are layers inside the model, so a
caller feeds pixels and needs to know nothing else; the model's own ``uncertain`` threshold
travels in the file too (:attr:`Classifier.min_confidence`). :func:`load` checks the
contract when it opens the file, and every answer is checked to be finite: a model that
answers NaN or infinity is broken (:class:`ModelOutputError`), never an answer. TensorFlow
is imported only for a ``.keras`` file, and only after the file's zip members are bounded
(:func:`check_keras_archive`): with an ONNX model nothing here needs more than numpy and
onnxruntime (``pip install mnist-pipeline``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mnist_pipeline import paths, uncertainty
from mnist_pipeline.prepared import IMAGE_SHAPE, NUM_CLASSES

ModelKind = Literal["onnx", "keras"]
SUFFIXES: dict[str, ModelKind] = {".onnx": "onnx", ".keras": "keras"}
# Digits per model call: a few MB of activations at a time, whatever N is.
DEFAULT_BATCH_SIZE = 256

# A .keras file is a zip whose members Keras reads whole into memory (config.json is parsed
# into Python objects), trusting the sizes the zip declares. These bound what it may make
# Keras read, checked from the zip's central directory before Keras is imported:
MAX_KERAS_BYTES = 1 << 30  # all members inflated: far more than a model of this contract needs
MAX_KERAS_JSON_BYTES = 16 << 20  # a .json member (config, metadata): parsed whole
# Keras stores its members uncompressed; a member larger than the floor that inflates to
# more than this many times what it stores is a decompression bomb, not a model.
MAX_INFLATION = 100
INFLATION_FLOOR = 1 << 20
_READ_BYTES = 1 << 20  # members are read this much at a time when their CRCs are checked


class ModelError(ValueError):
    """A model file that is missing, unreadable or of another contract; names the file."""


class ModelOutputError(ModelError):
    """The model answered NaN or infinite probabilities: it is broken, and that is no answer.

    Raised by :meth:`Classifier.probabilities`; the message is one line, naming the file."""


@dataclass(frozen=True)
class Classifier:
    """A loaded model: ``probabilities(pixels)`` for pixels (N, 28, 28) in 0..255."""

    path: Path | None  # None for a model built in memory (:func:`from_keras_model`)
    kind: ModelKind
    run_batch: Callable[[np.ndarray], np.ndarray]  # float32 (n, 28, 28) -> (n, 10), n >= 1
    native: Any  # the keras.Model or onnxruntime.InferenceSession, for export and tests
    # The top probability below which an answer is `uncertain`: the model's own, fitted when
    # it was trained (uncertainty.fit_min_confidence), or the default for older files.
    min_confidence: float = uncertainty.MIN_CONFIDENCE

    def probabilities(self, pixels: np.ndarray,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Probabilities (N, 10) float32 for pixels (N, 28, 28) 0..255, in batches."""
        pixels = check_pixels(pixels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(pixels) == 0:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        batches = [self.run_batch(pixels[start:start + batch_size])
                   for start in range(0, len(pixels), batch_size)]
        probabilities = np.concatenate(batches).astype(np.float32, copy=False)
        check_finite(probabilities, self.path)
        return probabilities


def check_finite(probabilities: np.ndarray, path: Path | None = None) -> None:
    """Raise :class:`ModelOutputError` when any row of ``probabilities`` (N, 10) holds NaN
    or an infinity; the message names the model file and the first such digit."""
    broken = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if len(broken):
        which = (f"digit {broken[0]}" if len(broken) == 1
                 else f"{len(broken)} digits, the first {broken[0]}")
        source = f"{path}: the model" if path is not None else "the model"
        raise ModelOutputError(f"{source} answered NaN or infinite probabilities ({which} of "
                               f"{len(probabilities)}): a broken model, not an answer")


def check_pixels(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as float32 (N, 28, 28), or ValueError naming the shape it has."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected pixels of shape (N, 28, 28), got {pixels.shape}")
    return pixels


def default_model_path(models_dir: Path = paths.MODELS_DIR) -> Path:
    """The model that predict and serve use unless told: the ONNX file when it exists (it
    starts in a fraction of a second, without TensorFlow), else the ``.keras`` file."""
    onnx_file = models_dir / paths.ONNX_MODEL_FILE.name
    return onnx_file if onnx_file.is_file() else models_dir / paths.MODEL_FILE.name


def model_kind(path: str | Path) -> ModelKind:
    """``onnx`` or ``keras`` by the file's suffix; ModelError for any other."""
    kind = SUFFIXES.get(Path(path).suffix.lower())
    if kind is None:
        raise ModelError(f"{path}: expected a .onnx or .keras model file")
    return kind


def check_model_file(path: str | Path) -> ModelKind:
    """The kind of the model file at ``path``; :class:`ModelError` saying what is wrong when
    it is missing, is no regular file (a directory, a FIFO, a symbolic link that leads
    nowhere or in a loop) or is of another kind. Cheap (nothing is read): commands call it
    before any other work."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise ModelError(f"{path}: a broken symbolic link (to {os.readlink(path)}, which "
                             "does not exist)") from None
        model_kind(path)
        raise ModelError(f"{path}: model file not found; run `dvc repro` (or `make sample`) "
                         "first") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ModelError(f"{path}: a symbolic link loop (it never reaches a file)") from None
        raise ModelError(f"{path}: cannot be opened ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise ModelError(f"{path}: {special_file(mode)}, not a model file; expected a .onnx "
                         "or .keras file")
    return model_kind(path)


def special_file(mode: int) -> str:
    """What a file that is not a regular one is, by its ``st_mode``: ``is a directory``..."""
    kinds = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO (named pipe)"),
             (stat.S_ISSOCK, "is a socket"), (stat.S_ISCHR, "is a character device"),
             (stat.S_ISBLK, "is a block device"))
    return next((text for test, text in kinds if test(mode)), "is not a regular file")


def load(path: str | Path, threads: int | None = None) -> Classifier:
    """Open the model file at ``path`` (``.onnx`` or ``.keras``) and check its contract.

    ``threads``: onnxruntime's threads per model call (default: one per core). A server
    that runs the model beside its own event loop wants 1 (``serve`` passes it); TensorFlow's
    threads are process-wide and left as they are. Raises :class:`ModelError` with a
    one-line message naming ``path``.
    """
    path = Path(path)
    if check_model_file(path) == "onnx":
        return _load_onnx(path, threads)
    return from_keras_model(load_keras_model(path), path)


def from_keras_model(model: Any, path: Path | None = None) -> Classifier:
    """A ``keras.Model`` of the contract above (e.g. :func:`mnist_pipeline.model.export_model`
    of a network being trained) as a :class:`Classifier`, run as a loaded file is run."""
    return Classifier(path, "keras", keras_runner(model), model,
                      min_confidence_of(keras_threshold(model), path))


def min_confidence_of(value: object, path: Path | None = None) -> float:
    """The ``uncertain`` threshold a model file holds (``value``: the Keras layer's slope or
    the ONNX metadata's text; None when the file is older than per-model thresholds, which
    gives :data:`mnist_pipeline.uncertainty.MIN_CONFIDENCE`). :class:`ModelError` for a
    value that is no number in (0, 1)."""
    if value is None:
        return uncertainty.MIN_CONFIDENCE
    try:
        threshold = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0 < threshold < 1:
        source = f"{path}: " if path is not None else ""
        raise ModelError(f"{source}the model's uncertain threshold {str(value)[:40]!r} is not "
                         "a number between 0 and 1")
    return threshold


def keras_threshold(model: Any) -> object:
    """The negative slope of ``model``'s :data:`mnist_pipeline.uncertainty.THRESHOLD_LAYER`
    (see :func:`mnist_pipeline.model.export_model`), or None when it has no such layer."""
    try:
        layer = model.get_layer(uncertainty.THRESHOLD_LAYER)
    except (ValueError, AttributeError):  # Keras: "No such layer"
        return None
    return layer.get_config().get("negative_slope")


# ---------------------------------------------------------------------------------------
# ONNX: onnxruntime only


def _load_onnx(path: Path, threads: int | None) -> Classifier:
    try:
        import onnxruntime
    except ImportError:  # the base install has it; a hand-made environment may not
        raise ModelError(f"{path}: onnxruntime is not installed (pip install onnxruntime)"
                         ) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    # Idle worker threads sleep instead of spinning: on a few shared cores (serve's event
    # loop, other processes) spinning burns the CPU the rest needs (benchmarks/README.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own kinds for a bad file
        raise ModelError(f"{path}: not a loadable ONNX model ({first_line(error)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shapes = ([tuple(node.shape[1:]) for node in inputs], [tuple(node.shape[1:])
                                                          for node in outputs])
    if (len(inputs), len(outputs)) != (1, 1) or shapes != ([IMAGE_SHAPE], [(NUM_CLASSES,)]) \
            or inputs[0].type != "tensor(float)":
        raise ModelError(f"{path}: expected a model from float (N, 28, 28) pixels to (N, 10) "
                         f"probabilities, got {describe_nodes(inputs)} -> "
                         f"{describe_nodes(outputs)}")
    input_name = inputs[0].name
    threshold = min_confidence_of(
        session.get_modelmeta().custom_metadata_map.get(uncertainty.METADATA_KEY), path)

    def run_batch(pixels: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: pixels})[0]

    return Classifier(path, "onnx", run_batch, session, threshold)


def describe_nodes(nodes: list[Any]) -> str:
    """``[(?, 28, 28) float]``-style text for an error message."""
    def dims(node: Any) -> str:
        return ", ".join(str(d) if isinstance(d, int) else "?" for d in node.shape)

    return ", ".join(f"({dims(node)}) {node.type.removeprefix('tensor(').rstrip(')')}"
                     for node in nodes) or "nothing"


# ---------------------------------------------------------------------------------------
# Keras: TensorFlow, imported here and nowhere earlier


def load_keras_model(path: str | Path = paths.MODEL_FILE) -> Any:
    """The ``keras.Model`` in a ``.keras`` file (safe mode: no arbitrary code), checked to
    map (N, 28, 28) pixels to (N, 10) probabilities. Raises :class:`ModelError`.

    The zip is bounded first (:func:`check_keras_archive`), before TensorFlow is imported."""
    path = Path(path)
    check_model_file(path)
    check_keras_archive(path)
    keras = import_keras()
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds; all mean the same
        raise ModelError(f"{path}: not a loadable Keras model ({first_line(error)})") from None
    input_shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    output_shape = tuple(model.outputs[0].shape[1:]) if getattr(model, "outputs", None) else None
    if input_shape != IMAGE_SHAPE or output_shape != (NUM_CLASSES,):
        raise ModelError(f"{path}: expected a model from (N, 28, 28) pixels to (N, 10) "
                         f"probabilities, got {input_shape} -> {output_shape}")
    return model


def check_keras_archive(path: Path) -> None:
    """Refuse a ``.keras`` file whose zip members would make Keras read too much.

    From the zip's central directory: a ``.json`` member over :data:`MAX_KERAS_JSON_BYTES`,
    all members over :data:`MAX_KERAS_BYTES`, or a member over :data:`INFLATION_FLOOR`
    that inflates more than :data:`MAX_INFLATION` times (a decompression bomb). Then every
    member is read once, a MiB at a time, within the size it declares (zipfile stops
    there), its CRC checked: a member whose data disagrees with its declaration is refused
    too. Raises :class:`ModelError` (one line) for these and for any damaged zip.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            problem = archive_problem(members)
            if problem is None:
                for info in members:
                    with archive.open(info) as member:
                        while member.read(_READ_BYTES):
                            pass
    except Exception as error:  # noqa: BLE001 - a damaged zip raises many kinds
        raise ModelError(f"{path}: not a loadable Keras model ({first_line(error)})") from None
    if problem is not None:
        raise ModelError(f"{path}: not a loadable Keras model ({problem})")


def archive_problem(members: list[zipfile.ZipInfo]) -> str | None:
    """Why a zip of ``members`` (from its central directory) is refused, or None."""
    total = 0
    for info in members:
        size, stored = info.file_size, info.compress_size
        if info.filename.endswith(".json") and size > MAX_KERAS_JSON_BYTES:
            return (f"{info.filename} inflates to {size:,} bytes; a .json member may hold "
                    f"{MAX_KERAS_JSON_BYTES:,}")
        if size > INFLATION_FLOOR and size > MAX_INFLATION * stored:
            return (f"{info.filename} inflates to {size:,} bytes from {stored:,}: a "
                    "decompression bomb")
        total += size
    if total > MAX_KERAS_BYTES:
        return f"its members inflate to {total:,} bytes; at most {MAX_KERAS_BYTES:,} are read"
    return None


def keras_runner(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``model`` compiled into one TensorFlow graph for any batch size, numpy in and out.

    An eager ``model(pixels)`` runs Python for every layer on every call and
    ``model.predict`` builds a new function per call; the traced graph is built once (here,
    on one blank digit) and gives the same results, faster (benchmarks/README.md).
    """
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, *IMAGE_SHAPE), tf.float32)],
                 autograph=False)
    def probabilities(pixels):
        return model(pixels, training=False)

    probabilities(tf.zeros((1, *IMAGE_SHAPE), tf.float32))
    return lambda pixels: probabilities(pixels).numpy()


def import_keras() -> Any:
    """``import keras`` with TensorFlow's C++ start-up lines kept off the terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules:
        with native_stderr_silenced():
            import keras  # noqa: F401 - the first import prints TensorFlow's notices
    import keras

    return keras


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block; Python's ``sys.stderr`` included.

    TensorFlow's C++ start-up messages ("oneDNN custom operations are on", absl notices)
    come before its logging is configured, so TF_CPP_MIN_LOG_LEVEL cannot stop them; they
    would bury the one-line errors the commands print. An exception still propagates.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (a daemon): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
