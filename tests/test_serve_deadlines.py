"""`mnist-pipeline serve` (real uvicorn, 127.0.0.1) against connections that hold it without
asking anything: idle sockets, headers sent a byte at a time, and framing meant to smuggle.

Each test opens a bounded number of sockets to loopback, with short deadlines, and is over
within a minute; every socket is closed when it ends. (benchmarks/serve_hostile.py's
``flood`` measures the same with the default deadlines, and reports.)
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from sample_data import SmallModel
from serve_process import Server, serving

from mnist_pipeline.testing import PeakRss

pytestmark = pytest.mark.slow  # a server process and 400 sockets: ~30 s

HEADER_TIMEOUT, IDLE_TIMEOUT = 6.0, 4.0  # the server's deadlines here (10 and 5 by default)
SLOW_HEADER = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def closed_by_server(connection: socket.socket, wait: float) -> bytes | None:
    """What the server sent before closing ``connection`` within ``wait`` s; None if open."""
    connection.settimeout(wait)
    received = b""
    try:
        while chunk := connection.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except OSError:  # reset: closed too
        pass
    return received


def test_idle_and_slow_header_connections_never_starve_requests_and_are_closed(
        small_model: SmallModel, tmp_path: Path) -> None:
    """The probe round: 200 sockets that send nothing and 200 that send a header byte at a
    time made every request a 503 for as long as they were held. Now /health and /predict
    answer within a second while they are held, and the deadlines close all of them."""
    digit = small_model.digits[0].astype(int).tolist()
    body = ('{"pixels": ' + str(digit) + "}").encode()
    with serving(small_model.onnx_path, tmp_path / "server.log", "--header-timeout",
                 str(HEADER_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT)) as server, \
            PeakRss(server.process.pid) as memory:
        idle, slow = [], []
        stop = threading.Event()
        try:
            opened = time.monotonic()
            for _ in range(200):
                idle.append(connect(server))
                slow.append(connect(server))
                slow[-1].sendall(SLOW_HEADER)

            def drip() -> None:  # one more header byte per socket every second
                while not stop.wait(1.0):
                    for connection in slow:
                        with contextlib.suppress(OSError):  # closed by the deadline
                            connection.send(b"x")

            dripping = threading.Thread(target=drip, daemon=True)
            dripping.start()
            answers = []
            while time.monotonic() < opened + min(IDLE_TIMEOUT, HEADER_TIMEOUT) - 1:
                for request in (lambda: server.request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                       "Connection: close\r\n", timeout=5),
                                lambda: server.post(body, "application/json", timeout=5)):
                    start = time.perf_counter()
                    status = request()[0]
                    answers.append((status, time.perf_counter() - start))
                time.sleep(0.1)
            held = sum(closed_by_server(connection, 0.001) is None for connection in idle + slow)
            assert held >= 350, f"only {held} of the 400 sockets were still open to test with"
            assert len(answers) >= 6 and {status for status, _ in answers} == {200}, answers
            worst = max(seconds for _, seconds in answers)
            assert worst < 1.0, f"a request took {worst:.2f} s under the flood"

            # The deadlines: every socket is closed by the server, a slow one with a 408.
            cut_slow = [closed_by_server(connection, HEADER_TIMEOUT + 5) for connection in slow]
            stop.set()
            cut_idle = [closed_by_server(connection, 5) for connection in idle]
            assert all(data is not None for data in cut_idle + cut_slow), "sockets stayed open"
            assert time.monotonic() - opened < HEADER_TIMEOUT + 10
            assert all(data == b"" for data in cut_idle)  # nothing was asked: nothing to answer
            assert all(data.startswith(b"HTTP/1.1 408 ") and b"did not arrive within" in data
                       for data in cut_slow), cut_slow[0]
        finally:
            stop.set()
            for connection in idle + slow:
                connection.close()
        status, _ = server.request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   "Connection: close\r\n")
        assert status == 200
    assert memory.growth_mb < 100, f"the server grew by {memory.growth_mb:.0f} MB"


def test_a_new_connection_closes_the_longest_waiting_one_when_all_are_taken(
        small_model: SmallModel, tmp_path: Path) -> None:
    """With every connection taken by sockets that ask nothing, a real client still gets in:
    the one that has waited longest for its headers is closed to make room."""
    command = [sys.executable, "-c",
               "import uvicorn; from mnist_pipeline.app import api, server; "
               f"uvicorn.run(api.create_app({str(small_model.onnx_path)!r}), "
               "host='127.0.0.1', port={port}, log_level='warning', "
               "http=server.protocol_class(60, max_connections=20), timeout_keep_alive=60)"]
    with serving(small_model.onnx_path, tmp_path / "server.log", command=command) as server:
        held = []
        try:
            for _ in range(40):
                held.append(connect(server))
                time.sleep(0.01)  # so that "longest" is well defined
            for _ in range(3):
                status, answer = server.request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                "Connection: close\r\n", timeout=5)
                assert status == 200 and b'"status":"ok"' in answer
            still_open = [closed_by_server(connection, 0.2) is None for connection in held]
            assert sum(still_open) <= 20
            assert not any(still_open[:20]), "the oldest sockets should have been closed first"
        finally:
            for connection in held:
                connection.close()


def test_chunked_with_a_content_length_is_refused_and_the_connection_closed(
        small_model: SmallModel, tmp_path: Path) -> None:
    """Both framings at once: a proxy may read one and uvicorn the other (smuggling)."""
    with serving(small_model.onnx_path, tmp_path / "server.log") as server:
        smuggled = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        chunk = b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
        for method in (b"POST /predict", b"POST /v1/models/mnist:predict"):
            with connect(server) as connection:
                connection.sendall(method + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                   b"application/json\r\nContent-Length: 4\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
                answer = closed_by_server(connection, 5)
            assert answer is not None, "the connection was left open"
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert b"Transfer-Encoding and Content-Length" in answer
            assert answer.count(b"HTTP/1.1 ") == 1, "the smuggled request was answered"
        status, _ = server.request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   "Connection: close\r\n")
        assert status == 200
