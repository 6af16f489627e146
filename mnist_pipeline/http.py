"""HTTP GET of a whole body: timeouts, retries with exponential backoff, a size bound, a
deadline per file, progress.

Stdlib urllib only. A failure worth retrying (a timeout, a dropped connection, a 5xx answer)
is retried; anything else fails at once as a :class:`SourceError` naming the URL and why.
``timeout_seconds`` bounds each connect and each read; a whole-file deadline
(:func:`file_deadline`) bounds an attempt at the file, so a mirror that drips a few bytes a
second, each read well within the timeout, is still given up on.
Progress (:mod:`mnist_pipeline.progress`): a tqdm bar on a terminal, a few plain lines otherwise.
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from mnist_pipeline.progress import progress

# Worth another attempt: the server or the line had a hiccup. A refused connection, an unknown
# host or a 404 will not fix itself within a few seconds of backoff, so those fail at once
# (which also keeps an offline run from waiting on every mirror).
RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK_BYTES = 1 << 16
# The slowest average a mirror may send a file at: far below any working mirror (UCI's and the
# MNIST mirrors send megabytes a second), far above one stuck dripping bytes. With the file's
# largest size it sets the deadline of an attempt (:func:`file_deadline`).
MIN_BYTES_PER_SECOND = 32 * 1024
# The size assumed for the deadline of a body whose size is bounded by nothing (no
# ``max_bytes``): larger than any archive the datasets list.
UNBOUNDED_FILE_BYTES = 128 << 20


class SourceError(Exception):
    """One source could not give one file; ``origin`` is where, the message says why."""

    def __init__(self, origin: str, reason: str):
        super().__init__(reason)
        self.origin = origin
        self.reason = reason


class HttpStatusError(SourceError):
    """The server answered with an error status (``status``), e.g. 404."""

    def __init__(self, origin: str, status: int, reason: str):
        super().__init__(origin, f"HTTP {status} {reason}")
        self.status = status


class HostError(SourceError):
    """The server, not one file of it, failed: it could not be reached, kept failing or was
    too slow. Any other file asked of it now would fail the same way, so a caller trying a
    mirror's other names for a file may skip them."""


class TransientError(Exception):
    """A failure worth retrying: a timeout, a dropped connection, a 5xx answer."""


@dataclass(frozen=True)
class NetworkSettings:
    """How to talk to mirrors: per-request timeout, extra attempts, first backoff delay.

    Attempt ``n`` (from 0) that fails waits ``backoff_seconds * 2**n`` before the next.
    Each attempt at a file has :func:`file_deadline` to finish.
    """

    timeout_seconds: float = 30.0
    retries: int = 3
    backoff_seconds: float = 1.0
    progress: bool = True


def file_deadline(network: NetworkSettings, max_bytes: int | None) -> float:
    """Seconds one attempt at a file may take: ``timeout_seconds`` to connect and start, then
    the file's largest size (``max_bytes``; unknown: ``UNBOUNDED_FILE_BYTES``) at
    ``MIN_BYTES_PER_SECOND``. E.g. 30 s + 112 s for a 3.6 MB pen file, 30 s + 24 min for
    MNIST's 47 MB training images served uncompressed."""
    size = UNBOUNDED_FILE_BYTES if max_bytes is None else max_bytes
    return network.timeout_seconds + size / MIN_BYTES_PER_SECOND


def http_get(
    url: str, network: NetworkSettings, label: str = "", max_bytes: int | None = None,
    deadline_seconds: float | None = None,
) -> bytes:
    """The whole body of ``url``, retrying transient failures with exponential backoff.

    Each attempt must finish within ``deadline_seconds`` (default :func:`file_deadline`);
    one that does not is given up on at once, not retried (a mirror that slow is no better a
    few seconds later). Raises HttpStatusError for an error status, HostError when the
    server failed as a whole (unreachable, still failing after the retries, past the
    deadline), SourceError for anything else, including a body of more than ``max_bytes``.
    """
    if deadline_seconds is None:
        deadline_seconds = file_deadline(network, max_bytes)
    for attempt in range(network.retries):
        try:
            return http_get_once(url, network, label, max_bytes, deadline_seconds)
        except TransientError:
            time.sleep(network.backoff_seconds * 2**attempt)
    try:  # the last attempt
        return http_get_once(url, network, label, max_bytes, deadline_seconds)
    except TransientError as error:
        attempts = network.retries + 1
        raise HostError(url, f"{error} (gave up after {attempts} attempt(s))") from None


def http_get_once(
    url: str, network: NetworkSettings, label: str, max_bytes: int | None = None,
    deadline_seconds: float | None = None,
) -> bytes:
    """One GET of ``url`` within ``deadline_seconds`` (default :func:`file_deadline`);
    TransientError when a retry could help, SourceError when not."""
    if deadline_seconds is None:
        deadline_seconds = file_deadline(network, max_bytes)
    deadline = Deadline(url, deadline_seconds)
    try:
        # No single connect or read may outlast the deadline either.
        timeout = min(network.timeout_seconds, deadline_seconds)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return read_body(response, network, label or url, max_bytes, deadline)
    except urllib.error.HTTPError as error:
        if error.code in RETRYABLE_HTTP_STATUSES:
            raise TransientError(f"HTTP {error.code} {error.reason}") from None
        raise HttpStatusError(url, error.code, str(error.reason)) from None
    except urllib.error.URLError as error:
        if deadline.passed():  # connecting took the whole deadline
            raise deadline.error() from None
        if is_transient(error.reason):
            raise TransientError(describe_os_error(error.reason)) from None
        raise HostError(url, describe_os_error(error.reason)) from None
    except (http.client.IncompleteRead, http.client.RemoteDisconnected) as error:
        raise TransientError(f"connection dropped mid-file ({error!r})") from None
    except (http.client.HTTPException, OSError) as error:
        if deadline.passed():  # a read timed out because the deadline had come
            raise deadline.error() from None
        if is_transient(error):
            raise TransientError(describe_os_error(error)) from None
        raise SourceError(url, describe_os_error(error)) from None


class Deadline:
    """The moment an attempt at ``url`` must be done by, ``seconds`` from now."""

    def __init__(self, url: str, seconds: float):
        self.url, self.seconds = url, seconds
        self.start = time.monotonic()
        self.received: int | None = None

    def passed(self) -> bool:
        return time.monotonic() - self.start >= self.seconds

    def check(self, received: int) -> None:
        """Raise :meth:`error` once the deadline has passed; ``received``: bytes so far."""
        self.received = received
        if self.passed():
            raise self.error()

    def error(self) -> HostError:
        got = "" if self.received is None else f", {self.received:,} bytes received"
        return HostError(self.url, f"too slow: not done within this file's deadline of "
                                     f"{self.seconds:,.1f} s{got}")


def read_body(
    response: http.client.HTTPResponse, network: NetworkSettings, label: str,
    max_bytes: int | None = None, deadline: Deadline | None = None,
) -> bytes:
    """Read a response in chunks, showing progress; TransientError if it falls short,
    SourceError as soon as it announces or sends more than ``max_bytes``, or once
    ``deadline`` has passed."""
    length_header = response.headers.get("Content-Length")
    expected = int(length_header) if length_header and length_header.isdigit() else None
    if max_bytes is not None and expected is not None and expected > max_bytes:
        raise SourceError(response.url, f"announces {expected:,} bytes, more than the "
                                        f"{max_bytes:,} a copy of this file can be")
    chunks, received = [], 0
    with progress(label, expected, network.progress) as bar:
        # read1, not read: read(n) waits for all n bytes, so a server dripping a byte at a
        # time would hold it for hours while every single recv stays within the timeout.
        while chunk := response.read1(CHUNK_BYTES):
            chunks.append(chunk)
            received += len(chunk)
            if max_bytes is not None and received > max_bytes:
                raise SourceError(response.url, f"sends more than the {max_bytes:,} bytes a "
                                                "copy of this file can be")
            bar.update(len(chunk))
            if deadline is not None:
                deadline.check(received)
    data = b"".join(chunks)
    if expected is not None and len(data) != expected:
        raise TransientError(f"connection dropped mid-file ({len(data)} of {expected} bytes)")
    return data


def is_transient(error: object) -> bool:
    """Whether a low-level network error may go away on its own (a timeout, a reset)."""
    if isinstance(error, (ConnectionRefusedError, socket.gaierror)):
        return False
    return isinstance(error, (TimeoutError, ConnectionError, http.client.HTTPException))


def describe_os_error(error: object) -> str:
    """A short, readable reason for a network error (``str`` of some is empty or cryptic)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"host not found ({error.strerror})"
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
