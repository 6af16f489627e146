"""A real HTTP server on 127.0.0.1 for the download tests (the dataset's and the pen files'):
no network mocks, the real urllib code talks to it. The ``server`` fixture (conftest.py) is
one of these per test.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

from mnist_pipeline.http import NetworkSettings

# Short timeouts and backoff, no progress lines: what the tests download is tiny and local.
FAST = NetworkSettings(timeout_seconds=5, retries=2, backoff_seconds=0.01, progress=False)


class LoopbackHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` by path; the first GET of a path in ``server.drop_first``
    announces the full Content-Length, sends half the body and hangs up; a path in
    ``server.drip`` ({path: (bytes, seconds)}) is sent that many bytes at a time, that many
    seconds apart, until the client hangs up."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(self.server.statuses.get(self.path, 404))
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.server.drop_first:
            self.server.drop_first.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if self.path in self.server.drip:
            step, pause = self.server.drip[self.path]
            with contextlib.suppress(ConnectionError):
                for start in range(0, len(body), step):
                    self.wfile.write(body[start:start + step])
                    self.wfile.flush()
                    time.sleep(pause)
            return
        with contextlib.suppress(ConnectionError):  # a client that stops reading (too big)
            self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@contextlib.contextmanager
def loopback_server() -> Iterator[http.server.ThreadingHTTPServer]:
    """A loopback HTTP server; set ``.files`` ({"/path": bytes}), ``.drop_first``, ``.drip``
    and ``.statuses`` ({"/path": error status instead of 404})."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoopbackHandler)
    httpd.files, httpd.drop_first, httpd.requests, httpd.statuses = {}, set(), [], {}
    httpd.drip = {}
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
