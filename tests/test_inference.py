"""mnist_pipeline.inference: one way to load and run a model file, .onnx or .keras.

The contract (pixels (N, 28, 28) 0..255 in, (N, 10) probabilities out) is checked on loading;
both kinds answer alike; the ONNX path runs without TensorFlow or Keras ever imported.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from sample_data import SmallModel

from mnist_pipeline import inference


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_both_kinds_answer_as_the_keras_model_does(small_model: SmallModel, kind):
    path = small_model.onnx_path if kind == "onnx" else small_model.path
    classifier = inference.load(path)
    assert (classifier.kind, classifier.path) == (kind, path)
    expected = np.asarray(small_model.model(small_model.digits))
    for batch_size in (1, 7, 256):  # batches of every size, the last one short
        probabilities = classifier.probabilities(small_model.digits, batch_size)
        assert probabilities.dtype == np.float32 and probabilities.shape == (200, 10)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(probabilities.argmax(1), small_model.predicted)
    assert classifier.probabilities(np.zeros((0, 28, 28))).shape == (0, 10)
    with pytest.raises(ValueError, match=r"expected pixels of shape \(N, 28, 28\), got \(3, 784\)"):
        classifier.probabilities(np.zeros((3, 784)))


def test_the_default_model_is_the_onnx_one_when_it_exists(tmp_path):
    assert inference.default_model_path(tmp_path) == tmp_path / "model.keras"
    (tmp_path / "model.onnx").write_bytes(b"")
    assert inference.default_model_path(tmp_path) == tmp_path / "model.onnx"


@pytest.mark.parametrize("name, content, reason", [
    ("model.keras", b"", "not a loadable Keras model"),
    ("model.keras", b"PK\x03\x04 truncated zip", "not a loadable Keras model"),
    ("model.onnx", b"", "not a loadable ONNX model"),
    ("model.onnx", b"\x08\x07 not protobuf at all", "not a loadable ONNX model"),
    ("model.h5", b"", "expected a .onnx or .keras model file"),
])
def test_a_bad_model_file_is_one_line_naming_it(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(inference.ModelError) as caught:
        inference.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


@pytest.mark.parametrize("name", ["model.keras", "model.onnx"])
def test_a_missing_model_says_how_to_make_one(tmp_path, name):
    with pytest.raises(inference.ModelError, match="model file not found; run `dvc repro`"):
        inference.load(tmp_path / name)


def test_an_onnx_model_of_another_contract_is_refused(tmp_path):
    """A valid ONNX model that takes (N, 784) is not this project's model."""
    import keras

    other = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    other(np.zeros((1, 784), np.float32))
    other.export(str(tmp_path / "flat.onnx"), format="onnx", verbose=False)
    with pytest.raises(inference.ModelError,
                       match=r"flat.onnx: expected a model from float \(N, 28, 28\) pixels to "
                             r"\(N, 10\) probabilities, got \(\?, 784\) float -> \(\?, 10\) float"):
        inference.load(tmp_path / "flat.onnx")


ONNX_ONLY = """
import json, sys
import numpy as np
from mnist_pipeline import inference
classifier = inference.load(sys.argv[1])
probabilities = classifier.probabilities(np.zeros((3, 28, 28), np.float32) + 40)
heavy = sorted(name for name in sys.modules
               if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax", "torch"))
print(json.dumps({"shape": list(probabilities.shape), "heavy": heavy}))
"""


def test_an_onnx_model_runs_without_tensorflow_or_keras(small_model: SmallModel):
    result = subprocess.run([sys.executable, "-c", ONNX_ONLY, str(small_model.onnx_path)],
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == {"shape": [3, 10], "heavy": []}


# --- model paths that are not model files -----------------------------------------------


def test_a_model_path_that_is_no_file_says_what_it_is(tmp_path):
    folder = tmp_path / "serving"
    folder.mkdir()
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.keras"
    loop.symlink_to(loop.name)
    broken = tmp_path / "gone.onnx"
    broken.symlink_to("nowhere.onnx")
    for path, reason in ((folder, "is a directory, not a model file"),
                         (fifo, "is a FIFO (named pipe), not a model file"),
                         (loop, "a symbolic link loop"),
                         (broken, "a broken symbolic link (to nowhere.onnx, which does not exist)"),
                         (Path("/dev/null"), "is a character device, not a model file")):
        with pytest.raises(inference.ModelError) as caught:
            inference.load(path)  # a FIFO would block the reader: refused before opening
        message = str(caught.value)
        assert message.startswith(f"{path}: {reason}") and "\n" not in message, message
        assert "not found" not in message


# --- .keras zip bombs: refused from the zip's directory, before Keras is imported -----------


def deflated_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes (a multiple of 1 MiB), about a thousandth
    of that, and the CRC-32 of what it inflates to: one compressed MiB repeated (a full
    flush makes each copy stand alone)."""
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(block, crc)
    return piece * (size >> 20) + compressor.flush(), crc


def zip_archive(members: list[tuple[str, bytes, int, int]]) -> bytes:
    """A zip of (name, deflated data, inflated size, CRC-32) members, written by hand so that
    the sizes it declares are whatever the caller says."""
    local, central = bytearray(), bytearray()
    for name, data, size, crc in members:
        encoded = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, zipfile.ZIP_DEFLATED,
                               0, 0x21, crc, len(data), size, len(encoded), 0, 0, 0, 0, 0,
                               len(local)) + encoded
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, zipfile.ZIP_DEFLATED, 0, 0x21,
                             crc, len(data), size, len(encoded), 0) + encoded + data
    return bytes(local + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members),
                                               len(members), len(central), len(local), 0))


def deflated(data: bytes) -> tuple[bytes, int, int]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(), len(data), zlib.crc32(data)


# Loads each model file given and prints what it raised, which heavy modules were imported,
# and how far the process's peak memory grew.
LOAD_REFUSED = """
import json, sys
from mnist_pipeline import inference
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
before, errors = peak(), []
for path in sys.argv[1:]:
    try:
        inference.load(path)
        errors.append(None)
    except inference.ModelError as error:
        errors.append(str(error))
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras"))
print(json.dumps({"errors": errors, "heavy": heavy, "growth": peak() - before}))
"""


def test_a_zip_bomb_is_refused_before_keras_opens_it(tmp_path, small_model: SmallModel):
    gigabyte = 1 << 30
    bomb, crc = deflated_zeros(gigabyte)
    metadata = deflated(b'{"keras_version": "3"}')
    files = {
        "config_bomb.keras": zip_archive([("metadata.json", *metadata),
                                          ("config.json", bomb, gigabyte, crc)]),
        "weights_bomb.keras": zip_archive([("metadata.json", *metadata),
                                           ("model.weights.h5", bomb, gigabyte, crc)]),
        # declares 1 MiB of config where its data inflates to 1 GiB: read 1 MiB, CRC wrong
        "lying.keras": zip_archive([("config.json", bomb, 1 << 20, crc)]),
    }
    damaged = bytearray(small_model.path.read_bytes())
    damaged[damaged.index(b"\x89HDF") + 4096] ^= 0xFF  # a byte of the stored weights
    files["damaged.keras"] = bytes(damaged)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert all(len(data) < 2 << 20 for data in files.values())  # small on disk
    result = subprocess.run([sys.executable, "-c", LOAD_REFUSED,
                             *(str(tmp_path / name) for name in files)],
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    expected = [
        r"config\.json inflates to 1,073,741,824 bytes; a \.json member may hold 16,777,216",
        r"model\.weights\.h5 inflates to 1,073,741,824 bytes from [\d,]+: a "
        r"decompression bomb",
        r"Bad CRC-32 for file 'config\.json'",
        r"Bad CRC-32 for file 'model\.weights\.h5'",
    ]
    for name, error, reason in zip(files, report["errors"], expected, strict=True):
        assert re.fullmatch(rf"{re.escape(str(tmp_path / name))}: not a loadable Keras model "
                            rf"\({reason}\)", error or ""), error
    assert report["heavy"] == []  # refused before TensorFlow was imported
    assert report["growth"] < 64 << 20, f"refusing grew the process by {report['growth']:,}"


def test_a_keras_model_within_the_limits_loads(small_model: SmallModel):
    inference.check_keras_archive(small_model.path)  # Keras's own file passes the checks
    members = [zipfile.ZipInfo("config.json"), zipfile.ZipInfo("model.weights.h5")]
    members[0].file_size = members[0].compress_size = inference.MAX_KERAS_JSON_BYTES
    members[1].file_size = members[1].compress_size = 8 << 20  # stored: inflates 1:1
    assert inference.archive_problem(members) is None
    members[1].compress_size = (8 << 20) // 101
    assert "a decompression bomb" in inference.archive_problem(members)
    members[1].compress_size = members[1].file_size = inference.MAX_KERAS_BYTES
    assert "at most 1,073,741,824 are read" in inference.archive_problem(members)


# --- models that answer NaN or infinity ----------------------------------------------------


def onnx_model(path: Path, weight: float, softmax: bool = True,
               per_ink: bool = False) -> Path:
    """An ONNX model of the project's contract: pixels (N, 28, 28) -> (N, 10), its 784 x 10
    weights all ``weight``; ``per_ink`` divides the logits by the digit's pixel sum (NaN
    for a blank digit only)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["pixels", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weights"], ["logits"])]
    if per_ink:
        nodes += [helper.make_node("ReduceSum", ["flat", "axes"], ["ink"], keepdims=1),
                  helper.make_node("Div", ["logits", "ink"], ["scaled"])]
    last = nodes[-1].output[0]
    nodes.append(helper.make_node("Softmax", [last], ["probabilities"], axis=1) if softmax
                 else helper.make_node("Identity", [last], ["probabilities"]))
    graph = helper.make_graph(
        nodes, "broken", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                        ["N", 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.full((784, 10), weight, np.float32), "weights"),
         numpy_helper.from_array(np.array([-1, 784], np.int64), "shape"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), path)
    return path


@pytest.mark.parametrize("weight, softmax, answer", [
    (float("nan"), True, "NaN"), (float("inf"), False, "infinity")])
def test_an_onnx_model_that_answers_nan_or_infinity_is_an_error(tmp_path, weight, softmax,
                                                               answer):
    path = onnx_model(tmp_path / "broken.onnx", weight, softmax)
    classifier = inference.load(path)  # its contract is right: it loads
    raw = classifier.run_batch(np.full((3, 28, 28), 40, np.float32))
    assert (np.isnan(raw) if answer == "NaN" else np.isinf(raw)).all()
    with pytest.raises(inference.ModelOutputError) as caught:
        classifier.probabilities(np.full((3, 28, 28), 40, np.float32))
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == (f"{path}: the model answered NaN or infinite probabilities "
                                 "(3 digits, the first 0 of 3): a broken model, not an answer")


def test_one_non_finite_answer_in_a_batch_is_an_error_naming_that_digit(tmp_path):
    classifier = inference.load(onnx_model(tmp_path / "m.onnx", 0.01, per_ink=True))
    pixels = np.full((4, 28, 28), 40, np.float32)
    assert np.isfinite(classifier.probabilities(pixels)).all()
    pixels[2] = 0  # a blank digit: 0 / 0
    with pytest.raises(inference.ModelOutputError, match=r"\(digit 2 of 4\): a broken model"):
        classifier.probabilities(pixels, batch_size=3)


def test_a_keras_model_that_answers_nan_is_an_error(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.full_like(kernel, np.nan), bias])
    model.save(tmp_path / "nan.keras")
    with pytest.raises(inference.ModelOutputError, match=r"nan\.keras: the model answered NaN"):
        inference.load(tmp_path / "nan.keras").probabilities(np.zeros((2, 28, 28)))
    with pytest.raises(inference.ModelOutputError, match=r"^the model answered NaN"):
        inference.from_keras_model(model).probabilities(np.zeros((1, 28, 28)))


def test_predict_with_a_model_answering_nan_is_one_line_and_exit_2(tmp_path, capsys):
    """`mnist-pipeline predict`: no CSV of NaN answers; the model is what is wrong."""
    from mnist_pipeline.app import cli

    model = onnx_model(tmp_path / "broken.onnx", float("nan"))
    digits = tmp_path / "digits.npy"
    strokes = np.zeros((2, 28, 28), np.float32)
    strokes[:, 6:22, 12:16] = 255  # two "1"s: real digits, so the model is asked
    np.save(digits, strokes)
    output = tmp_path / "out.csv"
    assert cli.main(["predict", "--model", str(model), "--output", str(output),
                     str(digits)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "the model answered NaN or infinite probabilities" in error
    assert not output.exists()
