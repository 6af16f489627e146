"""Launching ``serve``: uvicorn with deadlines and a bound on connections, and the process
tuned for a server that decodes large pictures.

uvicorn closes a keep-alive connection that stays idle after an answer, but it gives a new
connection, or one that sends its headers a byte at a time, all the time it wants, and its
``limit_concurrency`` counts those connections as load: a few hundred sockets that send
nothing would make every request a 503. :class:`DeadlineH11Protocol` adds the deadlines
(:data:`limits.HEADER_TIMEOUT_SECONDS`, :data:`limits.IDLE_TIMEOUT_SECONDS`) and makes room
for a new connection by closing the one that has waited longest for its headers; requests
in progress are bounded by :class:`guard.GuardRequests` instead.
"""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mnist_pipeline import inference
from mnist_pipeline.app.api import create_app
from mnist_pipeline.app.limits import (
    BODY_TIMEOUT_SECONDS,
    HEADER_TIMEOUT_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    MAX_CONNECTIONS,
)

# File descriptors the process needs besides its connections (model, logs, pictures).
SPARE_FILES = 256


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with deadlines for the next request's headers.

    From the moment a connection opens, or its last answer is sent, its client has
    ``idle_timeout`` seconds to send a first byte (uvicorn's keep-alive timeout, which it
    applies only after an answer) and ``header_timeout`` seconds to complete the request's
    headers; else the connection is closed, with a 408 when some bytes came. Body deadlines
    are :class:`guard.GuardRequests`'. With ``max_connections`` open, a new one closes the
    connection that has waited longest for its headers.
    """

    header_timeout: float = HEADER_TIMEOUT_SECONDS
    max_connections: int = MAX_CONNECTIONS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self.waiting_since: float | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._close_longest_waiting()
        self._await_headers()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle or self.transport.is_closing():
            self._headers_in()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if not self.transport.is_closing():
            self._await_headers()
        super().on_response_complete()
        if self.cycle is not cycle or self.transport.is_closing():  # a pipelined request
            self._headers_in()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_in()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._headers_in()
        self.waiting_since = self.loop.time()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _headers_in(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer, self.waiting_since = None, None

    def _headers_too_slow(self) -> None:
        self._header_timer, self.waiting_since = None, None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is cut off
            body = json.dumps({"detail": "the request's headers did not arrive within "
                                         f"{self.header_timeout:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: "
                                 b"application/json\r\nconnection: close\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()

    def _close_longest_waiting(self) -> None:
        waiting = [connection for connection in self.connections
                   if connection is not self and getattr(connection, "waiting_since", None)
                   is not None]
        if not waiting:  # every other connection has a request in progress: refuse this one
            self.transport.close()
            return
        oldest = min(waiting, key=lambda connection: connection.waiting_since)
        oldest._headers_in()
        oldest.transport.close()


def protocol_class(header_timeout: float, max_connections: int = MAX_CONNECTIONS) -> type:
    """:class:`DeadlineH11Protocol` with these limits (uvicorn makes one per connection)."""
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})


def run(model: str | Path | inference.Classifier, host: str, port: int,
        body_timeout: float = BODY_TIMEOUT_SECONDS,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS, collect=None) -> None:
    """Serve ``model`` with uvicorn on ``host:port`` until interrupted: at most
    :data:`MAX_CONNECTIONS` connections, each with the deadlines above; corrections go to
    ``collect`` (:func:`api.create_app`)."""
    return_freed_memory()
    allow_open_files(MAX_CONNECTIONS + SPARE_FILES)
    uvicorn.run(create_app(model, body_timeout=body_timeout, collect=collect,
                           allowed_hosts=(host,)), host=host,
                port=port,
                log_level="info", timeout_graceful_shutdown=5,
                http=protocol_class(header_timeout), timeout_keep_alive=idle_timeout)


def allow_open_files(count: int) -> None:
    """Raise the soft limit on open files to ``count`` (never above the hard limit), so that
    :data:`MAX_CONNECTIONS` connections fit where the default soft limit is 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """Have glibc's malloc map blocks of ``threshold`` bytes and more on their own, so that
    freeing them gives them back to the system. Its default threshold grows to 32 MiB as
    large blocks are freed; decoded pictures (Pillow allocates 16 MiB blocks) then stay in
    the heap, fragmented, and the server keeps hundreds of MB it no longer uses. Does
    nothing where the C library is not glibc."""
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3  # glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_mmap_threshold, threshold)
    except (OSError, AttributeError):
        pass
