"""`serve` follows its model file, as TensorFlow Serving follows its model folder.

The served file is replaced as DVC replaces it (a rename, a rewrite in place, a symbolic or
hard link to a cache file) and the new model must answer within seconds, requests in flight
finishing on the old one; a file that fails its checks is refused with one log line while
the old model keeps answering; `/health` says which model answers. The models: the small
trained one of sample_data, and ONNX graphs built here in milliseconds (a linear layer and
a softmax: another model of the same contract, whose answers differ; and broken ones).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sample_data import SmallModel

from mnist_pipeline import inference
from mnist_pipeline.app import api, batching

SWAP_SECONDS = 5.0  # the target: the new model answers within this of the replacement


def linear_onnx(weights: np.ndarray, outputs: int = 10, flat_input: bool = False) -> bytes:
    """An ONNX model: pixels (N, 28, 28) (or (N, 784)) -> softmax(pixels @ weights)."""
    from onnx import TensorProto, helper, numpy_helper

    shape = ["N", 784] if flat_input else ["N", 28, 28]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["pixels", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "linear",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", outputs])],
        [numpy_helper.from_array(np.asarray([-1, 784], np.int64), "flat_shape"),
         numpy_helper.from_array(weights.astype(np.float32), "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


OTHER_WEIGHTS = np.random.default_rng(1).normal(0, 0.01, (784, 10))
OTHER = linear_onnx(OTHER_WEIGHTS)  # same contract, other answers
BAD_FILES = {
    "truncated": lambda good: good[:len(good) // 2],
    "garbage": lambda _good: np.random.default_rng(2).bytes(50_000),
    "empty": lambda _good: b"",
    "wrong contract": lambda _good: linear_onnx(np.zeros((784, 5)), outputs=5),
    "NaN answers": lambda _good: linear_onnx(np.full((784, 10), np.nan)),
}


def answers_of(model: bytes, digits: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: digits.astype(np.float32)})[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def replace(path: Path, data: bytes, how: str = "rename") -> None:
    """Make ``path`` hold ``data`` as a DVC command would: a new file renamed over it (an
    atomic write, ``dvc exp run``), the same file rewritten in place, or a symbolic or hard
    link to a file of the cache (``dvc checkout``, ``dvc pull``) renamed over it."""
    staged = path.with_name(f".{path.name}.{time.monotonic_ns()}")
    if how == "rewrite":
        with open(path, "r+b") as stream:
            stream.truncate(0)
            stream.write(data)
        return
    if how == "rename":
        staged.write_bytes(data)
    else:
        cache = path.parent / "cache" / sha256(data)
        cache.parent.mkdir(exist_ok=True)
        if not cache.exists():
            cache.write_bytes(data)
            cache.chmod(0o444)
        (os.symlink if how == "symlink" else os.link)(cache, staged)
    os.replace(staged, path)


def predict(client: TestClient, digits: np.ndarray) -> np.ndarray:
    response = client.post("/predict", content=json.dumps({"pixels": digits.tolist()}),
                           headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return np.asarray([row["probabilities"] for row in response.json()["predictions"]])


def which(probabilities: np.ndarray, expected: dict[str, np.ndarray]) -> str:
    """The name of the model whose answers ``probabilities`` are (exactly one must match)."""
    names = [name for name, answers in expected.items()
             if np.allclose(probabilities, answers, atol=2e-6)]
    assert len(names) == 1, f"answers of {names or 'no model'}"
    return names[0]


@dataclass(frozen=True)
class Served:
    path: Path  # the file served: a copy of the small model's ONNX file at first
    good: bytes  # its bytes
    digits: np.ndarray  # 8 held-out digits
    expected: dict[str, np.ndarray]  # each model's answers for them


@pytest.fixture
def served(small_model: SmallModel, tmp_path: Path) -> Served:
    path = tmp_path / "model.onnx"
    shutil.copyfile(small_model.onnx_path, path)
    good, digits = path.read_bytes(), small_model.digits[:8]
    expected = {"small": answers_of(good, digits), "other": answers_of(OTHER, digits)}
    assert (expected["small"].argmax(1) != expected["other"].argmax(1)).any()
    return Served(path, good, digits, expected)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The server's warnings and errors: each refused file is one."""
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING]


# --- the batcher: one model per call -------------------------------------------------------


def test_a_call_in_flight_finishes_on_the_old_model_and_the_next_takes_the_new() -> None:
    running, release = threading.Event(), threading.Event()

    def old(pixels: np.ndarray) -> np.ndarray:
        running.set()
        assert release.wait(10)
        return np.full((len(pixels), 10), 0.1, np.float32)

    def new(pixels: np.ndarray) -> np.ndarray:
        return np.eye(10, dtype=np.float32)[np.full(len(pixels), 3)]

    async def scenario(batcher: batching.ModelBatcher) -> tuple[np.ndarray, np.ndarray]:
        first = asyncio.ensure_future(batcher.predict(np.zeros((2, 28, 28), np.float32)))
        while not running.is_set():
            await asyncio.sleep(0.01)
        batcher.swap(new)  # while `old` runs on the first request
        second = asyncio.ensure_future(batcher.predict(np.zeros((1, 28, 28), np.float32)))
        await asyncio.sleep(0.05)
        release.set()
        return await first, await second

    batcher = batching.ModelBatcher(old)
    try:
        first, second = asyncio.run(scenario(batcher))
    finally:
        batcher.close()
    assert np.allclose(first, 0.1) and first.shape == (2, 10)
    assert second.argmax(1).tolist() == [3] and batcher.model_calls == 2


# --- /health -------------------------------------------------------------------------------


def test_health_names_the_file_that_answers_by_digest_and_times(served: Served) -> None:
    path, good = served.path, served.good
    app = api.create_app(path)
    before = time.time()
    answer = TestClient(app).get("/health").json()
    assert answer["status"] == "ok" and answer["model"] == str(path)  # the fields kept
    assert {"version", "requests", "model_calls", "collect"} <= set(answer)
    assert answer["model_sha256"] == sha256(good)
    modified = datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, UTC)
    assert answer["model_modified"] == modified.isoformat(timespec="milliseconds")[:23] + "Z"
    loaded = datetime.fromisoformat(answer["model_loaded"].replace("Z", "+00:00"))
    assert abs(loaded.timestamp() - before) < 60
    assert answer["model_reloads"] == 0 and answer["model_refused"] is None

    replace(path, OTHER)
    assert app.state.model_watcher.check(settled=True) == "loaded"
    answer = TestClient(app).get("/health").json()
    assert answer["model_sha256"] == sha256(OTHER) and answer["model_reloads"] == 1
    assert datetime.fromisoformat(answer["model_loaded"].replace("Z", "+00:00")) >= loaded


def test_health_of_a_model_built_in_memory_has_no_file() -> None:
    classifier = inference.Classifier(None, "onnx", lambda pixels: np.full(
        (len(pixels), 10), 0.1, np.float32), None)
    answer = TestClient(api.create_app(classifier)).get("/health").json()
    assert answer["model"] == "onnx" and answer["model_sha256"] is None
    assert answer["model_modified"] is None and answer["model_reloads"] == 0


# --- following the file --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["rename", "rewrite", "symlink", "hardlink"])
def test_the_replaced_file_answers_within_seconds_without_a_restart(served, how) -> None:
    """With the watcher's thread polling (every 0.2 s here, 1 s by default), as a running
    server would."""
    path, good, sample, expected = served.path, served.good, served.digits, served.expected
    with TestClient(api.create_app(path, poll_seconds=0.2)) as client:
        assert which(predict(client, sample), expected) == "small"
        replace(path, OTHER, how)
        replaced = time.monotonic()
        while which(predict(client, sample), expected) != "other":
            assert time.monotonic() - replaced < SWAP_SECONDS, "the old model still answers"
            time.sleep(0.05)
        health = client.get("/health").json()
        assert health["model_sha256"] == sha256(OTHER) and health["model_reloads"] == 1
        replace(path, good, how)  # and back
        replaced = time.monotonic()
        while which(predict(client, sample), expected) != "small":
            assert time.monotonic() - replaced < SWAP_SECONDS, "the old model still answers"
            time.sleep(0.05)
        assert client.get("/health").json()["model_sha256"] == sha256(good)


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_a_bad_file_is_refused_with_one_log_line_and_the_old_model_keeps_answering(
        served, bad, caplog) -> None:
    path, good, sample, expected = served.path, served.good, served.digits, served.expected
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    app = api.create_app(path)
    client, watcher = TestClient(app), app.state.model_watcher
    replace(path, BAD_FILES[bad](good))
    assert watcher.check() == "settling"  # a changed file is read once it holds still
    assert watcher.check() == "refused"
    for _ in range(3):  # polled again and again: nothing more to say
        assert watcher.check() == "unchanged"
    assert len(refusals(caplog)) == 1, refusals(caplog)
    assert str(path) in refusals(caplog)[0] and "\n" not in refusals(caplog)[0]
    assert which(predict(client, sample), expected) == "small"
    health = client.get("/health").json()
    assert health["model_sha256"] == sha256(good) and health["model_reloads"] == 0
    assert health["model_refused"] == refusals(caplog)[0].split(": ", 1)[1]

    replace(path, OTHER)  # a later good file is picked up
    assert watcher.check(settled=True) == "loaded"
    assert which(predict(client, sample), expected) == "other"
    health = client.get("/health").json()
    assert health["model_refused"] is None and health["model_reloads"] == 1
    assert len(refusals(caplog)) == 1


def test_a_missing_file_is_one_log_line_and_its_return_is_served(served, caplog) -> None:
    """`dvc checkout` removes a file before it links the new one."""
    path, sample, expected = served.path, served.digits, served.expected
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    app = api.create_app(path)
    client, watcher = TestClient(app), app.state.model_watcher
    path.unlink()
    assert [watcher.check() for _ in range(3)] == ["refused", "unchanged", "unchanged"]
    assert len(refusals(caplog)) == 1 and "not found" in refusals(caplog)[0]
    assert which(predict(client, sample), expected) == "small"
    path.write_bytes(OTHER)
    assert watcher.check(settled=True) == "loaded"
    assert which(predict(client, sample), expected) == "other"


def test_a_link_to_the_bytes_already_served_is_not_loaded_again(served, monkeypatch) -> None:
    path, good = served.path, served.good
    app = api.create_app(path)
    watcher = app.state.model_watcher
    loads = []
    monkeypatch.setattr(inference, "load", lambda *args: loads.append(args))
    replace(path, good, "hardlink")  # dvc checkout linking the cache's copy of the same model
    assert watcher.check(settled=True) == "same bytes" and loads == []
    assert watcher.check() == "unchanged" and watcher.reloads == 0


def test_a_keras_file_is_followed_too(small_model: SmallModel, tmp_path: Path) -> None:
    import keras

    path = tmp_path / "model.keras"
    shutil.copyfile(small_model.path, path)
    keras.utils.set_random_seed(1)
    other = keras.Sequential([keras.Input((28, 28)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    other.save(tmp_path / "other.keras")
    digits = small_model.digits[:8]
    expected = {"small": np.asarray(small_model.model(digits)),
                "other": np.asarray(other(digits))}
    app = api.create_app(path)
    client = TestClient(app)
    assert which(predict(client, digits), expected) == "small"
    replace(path, (tmp_path / "other.keras").read_bytes())
    assert app.state.model_watcher.check(settled=True) == "loaded"
    assert which(predict(client, digits), expected) == "other"


# --- the real command under traffic --------------------------------------------------------


class Traffic:
    """``clients`` threads, each on its own keep-alive connection to ``port``, posting the
    same 8 digits again and again; each answer recorded as (sent, received, model or error)."""

    def __init__(self, port: int, digits: np.ndarray, expected: dict[str, np.ndarray],
                 clients: int = 4):
        self.port, self.expected = port, expected
        self.body = json.dumps({"pixels": digits.astype(int).tolist()})
        self.answers: list[tuple[float, float, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(clients)]

    def _client(self) -> None:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                connection.request("POST", "/predict", self.body,
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                connection.close()  # and reconnect
                continue
            if response.status != 200:
                self.errors.append(f"{response.status}: {body[:200]!r}")
                continue
            answers = np.asarray([row["probabilities"] for row in json.loads(body)["predictions"]])
            names = [name for name, expected in self.expected.items()
                     if np.allclose(answers, expected, atol=1e-5)]
            self.answers.append((sent, time.monotonic(),
                                 names[0] if len(names) == 1 else "no model's answers"))
        connection.close()

    def first_answer(self, model: str, sent_after: float, timeout: float) -> float | None:
        """When the first request sent after ``sent_after`` answered by ``model`` came back,
        waiting up to ``timeout`` s for one; None if none came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = [received for sent, received, name in list(self.answers)
                     if sent >= sent_after and name == model]
            if times:
                return min(times)
            time.sleep(0.02)
        return None

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.mark.slow  # a server process, 20 swaps under traffic: ~40 s
def test_twenty_swaps_under_traffic_fail_no_request_and_keep_memory_bounded(
        served: Served) -> None:
    """The real command, its default poll (1 s), 4 clients posting all along; the file
    replaced 20 times between two models, in each of the ways DVC replaces a file."""
    import sys
    import urllib.request

    from mnist_pipeline.testing import PeakRss, free_port, rss_bytes, start_server, stop_server

    path, expected = served.path, served.expected
    models = {"small": served.good, "other": OTHER}
    hows = ["rename", "rewrite", "symlink", "hardlink"]  # a rewrite follows a file of its own
    swap_seconds = []
    port, log_path = free_port(), path.with_name("server.log")
    with log_path.open("w") as log:
        server = start_server([sys.executable, "-m", "mnist_pipeline.app.cli", "serve",
                               "--model", str(path), "--port", str(port)], port, log, 60)
    try:
        with Traffic(port, served.digits, expected) as traffic:
            assert traffic.first_answer("small", 0, 10) is not None
            time.sleep(1)  # warm: the first requests' allocations made
            before = rss_bytes(server.pid)
            with PeakRss(server.pid) as memory:
                for swap in range(20):
                    model = "other" if swap % 2 == 0 else "small"
                    replaced = time.monotonic()
                    replace(path, models[model], hows[swap % len(hows)])
                    answered = traffic.first_answer(model, replaced, SWAP_SECONDS + 1)
                    assert answered is not None, f"swap {swap}: the new model is not answering"
                    swap_seconds.append(answered - replaced)
                    time.sleep(0.2)
        after = rss_bytes(server.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            status, health = answer.status, json.load(answer)
    finally:
        stop_server(server)
    log = log_path.read_text()
    print(f"\n{len(traffic.answers)} requests, {len(traffic.errors)} errors; swap to answer: "
          f"mean {np.mean(swap_seconds):.2f} s, max {max(swap_seconds):.2f} s; RSS "
          f"{before / 1e6:.0f} MB -> {after / 1e6:.0f} MB (peak +{memory.growth_mb:.0f} MB)")
    assert traffic.errors == [], traffic.errors[:5]
    assert {name for _, _, name in traffic.answers} == {"small", "other"}
    assert len(traffic.answers) > 200
    assert max(swap_seconds) < SWAP_SECONDS, swap_seconds
    assert status == 200 and health["model_reloads"] == 20
    assert health["model_sha256"] == sha256(served.good) and health["model_refused"] is None
    assert log.count("now serving sha256") == 20 and "refused" not in log, log[-2000:]
    assert (after - before) / 1e6 < 100, f"the server grew by {(after - before) / 1e6:.0f} MB"
    assert memory.growth_mb < 200, f"the server's peak grew by {memory.growth_mb:.0f} MB"
