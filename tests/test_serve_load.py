"""`mnist-pipeline serve` (real uvicorn, 127.0.0.1) under the probe round's hostile traffic.

The real command serves the small model's ONNX file on a free port with a short body
deadline; its memory is read from /proc/<pid>/status (VmRSS, sampled every 10 ms). Each test
sends a bounded number of requests, to loopback only, and is over within a minute:

- 8 worst-case pictures at once (6300x6300 RGBA PNG, transparent, ~170 KB): at most 600 MB
  more, and it is given back;
- 200 uploads that declare 8 MiB and send all but one byte: at most 300 MB more, and every
  one is cut off (408, 503 or closed) soon after the deadline;
- 4 JSON bodies of 8 MiB of `[[]],` (costly to parse): refused unparsed, while /health and
  an ordinary request keep answering (the 500 ms target: benchmarks/serve_hostile.py);
- headers, HEAD, redirects and the log of a dropped upload.

(benchmarks/serve_hostile.py measures the same with the default deadline, and reports.)
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sample_data import SmallModel
from serve_process import Server, serving

from mnist_pipeline.app.limits import MAX_BODIES
from mnist_pipeline.testing import PeakRss, rss_bytes, worst_png

pytestmark = pytest.mark.slow  # a server process and ~2 GB of loopback traffic: ~40 s

MIB = 1 << 20
BODY_TIMEOUT = 3.0  # the server's --body-timeout here (30 s by default)


@pytest.fixture(scope="module")
def server(small_model: SmallModel, tmp_path_factory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("serve_load") / "server.log"
    with serving(small_model.onnx_path, log_path, "--body-timeout", str(BODY_TIMEOUT)) as running:
        yield running


def test_eight_worst_case_pictures_at_once_cost_at_most_600_mb(server: Server) -> None:
    picture = worst_png()
    assert len(picture) < 200_000
    results: list[tuple[int, float]] = []
    with PeakRss(server.process.pid) as memory:
        threads = [threading.Thread(target=lambda: results.append(
            server.post(picture, "image/png", timeout=55))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [status for status, _ in results] == [200] * 8
    assert memory.growth_mb <= 600, f"the server grew by {memory.growth_mb:.0f} MB"
    time.sleep(0.5)
    assert (rss_bytes(server.process.pid) - memory.before) / 1e6 < 100, "the memory stayed"


def test_two_hundred_unfinished_uploads_cost_at_most_300_mb_and_are_cut_off(
        server: Server) -> None:
    declared = 8 * MIB
    body = memoryview(bytes(declared - 1))
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    connections: list[socket.socket] = []
    answers: dict[str, int] = {}
    start = time.monotonic()
    with PeakRss(server.process.pid) as memory:
        try:
            for number in range(200):
                if number == MAX_BODIES:
                    # uvicorn counts the open connections when it reads a request's headers:
                    # were all 200 open by then, even the first would get 503 (seen on a
                    # loaded machine). Give the first MAX_BODIES their turns first.
                    time.sleep(1.0)
                connection = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                connection.sendall(head)
                connection.setblocking(False)
                connections.append(connection)
            sent = dict.fromkeys(connections, 0)
            waiting = set(connections)

            def answered(connection: socket.socket) -> None:
                try:
                    data = connection.recv(64)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data = b""
                key = data.split()[1].decode() if data.startswith(b"HTTP/") else "closed"
                answers[key] = answers.get(key, 0) + 1
                waiting.discard(connection)

            while waiting and time.monotonic() < start + 40:
                writing = [c for c in waiting if sent[c] < len(body)]
                readable, writable, _ = select.select(list(waiting), writing, [], 0.2)
                for connection in readable:
                    answered(connection)
                for connection in set(writable) & waiting:
                    try:
                        sent[connection] += connection.send(
                            body[sent[connection]:sent[connection] + 256 * 1024])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:  # cut off: its answer may be there to read
                        connection.settimeout(1)
                        answered(connection)
                        waiting.discard(connection)
            elapsed = time.monotonic() - start
        finally:
            for connection in connections:
                connection.close()
    assert not waiting, f"{len(waiting)} unfinished uploads still held after {elapsed:.0f} s"
    assert answers.get("408", 0) >= 1, answers  # those that were read were cut at the deadline
    assert set(answers) <= {"408", "503", "closed"}, answers
    assert memory.growth_mb <= 300, f"the server grew by {memory.growth_mb:.0f} MB"
    status, answer = server.request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Connection: close\r\n")
    assert status == 200 and b'"status":"ok"' in answer


def test_health_answers_within_half_a_second_while_hostile_json_is_parsed(
        server: Server, small_model: SmallModel) -> None:
    unit = b"[[]],"
    hostile = b'{"pixels": [' + unit * ((8 * MIB - 64) // len(unit)) + b"[[]]]}"
    digit = json.dumps({"pixels": small_model.digits[0].astype(int).tolist()}).encode()
    latencies: dict[str, list[float]] = {"health": [], "predict": []}
    statuses: list[int] = []
    done = threading.Event()

    def probe(kind: str) -> None:
        while not done.is_set():
            start = time.perf_counter()
            if kind == "health":
                status, _ = server.request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           "Connection: close\r\n")
            else:
                status, _ = server.post(digit, "application/json")
            assert status == 200
            latencies[kind].append(time.perf_counter() - start)
            time.sleep(0.05)

    probes = [threading.Thread(target=probe, args=(kind,)) for kind in latencies]
    senders = [threading.Thread(target=lambda: statuses.append(
        server.post(hostile, "application/json")[0])) for _ in range(4)]
    for thread in probes:
        thread.start()
    time.sleep(0.2)
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(timeout=50)
    time.sleep(0.2)
    done.set()
    for thread in probes:
        thread.join(timeout=10)
    assert statuses == [422] * 4
    # The 500 ms target is measured by benchmarks/serve_hostile.py (a timed assertion fails
    # on a loaded CI machine); this bound is one that such a machine meets and the server
    # that parsed those bodies whole (7.7 s on an idle machine) cannot.
    for kind, seconds in latencies.items():
        assert seconds and max(seconds) < 3.0, f"{kind}: {max(seconds) * 1000:.0f} ms"


def test_headers_head_redirects_and_a_dropped_upload(server: Server) -> None:
    status, answer = server.request("HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n")
    assert status == 200 and b"x-content-type-options: nosniff" in answer.lower()
    status, answer = server.request("GET /static HTTP/1.1\r\nHost: evil.example\r\n"
                                    "Connection: close\r\n")
    assert status == 421  # a name that is not this server's (DNS rebinding)
    status, answer = server.request("GET /static HTTP/1.1\r\nHost: localhost:1234\r\n"
                                    "Connection: close\r\n")
    assert 300 <= status < 400
    assert b"localhost:1234" not in answer and b"\r\nlocation: /static/\r\n" in answer.lower()
    for path in ("/health", "/predict"):
        _, answer = server.request(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   "Connection: close\r\n")
        assert b"x-content-type-options: nosniff" in answer.lower()
    # an upload dropped halfway: one line in the log, no traceback
    lines_before = server.log.read_text().count("\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: image/png\r\n"
                           b"Content-Length: 100000\r\n\r\n" + bytes(5000))
        time.sleep(0.3)
    time.sleep(0.5)
    log = server.log.read_text()
    new_lines = log.splitlines()[lines_before:]
    assert "Traceback" not in log
    assert any("went away" in line for line in new_lines), new_lines
    assert len(new_lines) <= 2, new_lines
    assert os.path.getsize(server.log) < 1_000_000


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_the_serving_benchmarks_run_in_smoke_mode(small_model: SmallModel, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/serve_hostile.py (every attack, the idle/slow flood included) and
    serve_latency.py on a few requests: a stale import or call fails here, not on the day
    someone measures. Nothing is measured."""
    import importlib

    monkeypatch.setenv("BENCHMARK_RESULTS_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    model = str(small_model.onnx_path)
    importlib.import_module("serve_hostile").main(["--smoke", "--model", model])
    attacks = json.loads((tmp_path / "serve_hostile.json").read_text())["attacks"]
    assert {"pictures", "unfinished", "json", "flood"} <= set(attacks)
    assert set(attacks["flood"]["health"]["statuses"]) == {"200"}, attacks["flood"]
    importlib.import_module("serve_latency").main(["--smoke", "--model", model])
    latency = json.loads((tmp_path / "serve_latency.json").read_text())
    assert set(latency["latency"]) == {"json", "png"} and latency["throughput"]
