"""`mnist-pipeline serve` as a real process on 127.0.0.1, and raw HTTP/1.1 exchanges with it:
what the load and deadline tests drive (tests/test_serve_load.py, test_serve_deadlines.py).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mnist_pipeline.testing import free_port


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log

    def request(self, head: str, body: bytes = b"", timeout: float = 20) -> tuple[int, bytes]:
        """One HTTP/1.1 exchange on a new connection: (status, raw answer)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as connection:
            connection.sendall(head.encode() + b"\r\n" + body)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and (head.startswith("HEAD")
                                             or len(answer) > content_end(answer)):
                    break
        return int(answer.split()[1]), answer

    def post(self, body: bytes, content_type: str, timeout: float = 60) -> tuple[int, float]:
        start = time.perf_counter()
        status, _ = self.request(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                 f"{content_type}\r\nContent-Length: {len(body)}\r\n"
                                 "Connection: close\r\n", body, timeout)
        return status, time.perf_counter() - start


def content_end(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return len(head) + 4 + length - 1


@contextlib.contextmanager
def serving(model: Path, log_path: Path, *options: str,
            command: Sequence[str] | None = None) -> Iterator[Server]:
    """The real command (or ``command``, with ``{port}`` in it) serving ``model`` on a free
    port until the block ends; its output in ``log_path``."""
    port = free_port()
    with log_path.open("w") as log:
        argv = [part.format(port=port) for part in command] if command else [
            sys.executable, "-m", "mnist_pipeline.app.cli", "serve", "--model", str(model),
            "--port", str(port), *options]
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the server did not start in 60 s"
                try:
                    server = Server(process, port, log_path)
                    if server.request("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                      "Connection: close\r\n", timeout=2)[0] == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
