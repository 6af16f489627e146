"""HTTP GET of a whole body: timeouts, retries with exponential backoff, a size bound, progress.

Stdlib urllib only. A failure worth retrying (a timeout, a dropped connection, a 5xx answer)
is retried; anything else fails at once as a :class:`SourceError` naming the URL and why.
"""

from __future__ import annotations

import http.client
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from tqdm import tqdm

# Worth another attempt: the server or the line had a hiccup. A refused connection, an unknown
# host or a 404 will not fix itself within a few seconds of backoff, so those fail at once
# (which also keeps an offline run from waiting on every mirror).
RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK_BYTES = 1 << 16


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


class TransientError(Exception):
    """A failure worth retrying: a timeout, a dropped connection, a 5xx answer."""


@dataclass(frozen=True)
class NetworkSettings:
    """How to talk to mirrors: per-request timeout, extra attempts, first backoff delay.

    Attempt ``n`` (from 0) that fails waits ``backoff_seconds * 2**n`` before the next.
    """

    timeout_seconds: float = 30.0
    retries: int = 3
    backoff_seconds: float = 1.0
    progress: bool = True


def http_get(
    url: str, network: NetworkSettings, label: str = "", max_bytes: int | None = None
) -> bytes:
    """The whole body of ``url``, retrying transient failures with exponential backoff.

    Raises HttpStatusError for an error status, SourceError for anything else that failed,
    including a body of more than ``max_bytes``.
    """
    for attempt in range(network.retries):
        try:
            return http_get_once(url, network, label, max_bytes)
        except TransientError:
            time.sleep(network.backoff_seconds * 2**attempt)
    try:  # the last attempt
        return http_get_once(url, network, label, max_bytes)
    except TransientError as error:
        attempts = network.retries + 1
        raise SourceError(url, f"{error} (gave up after {attempts} attempt(s))") from None


def http_get_once(
    url: str, network: NetworkSettings, label: str, max_bytes: int | None = None
) -> bytes:
    """One GET of ``url``; TransientError when a retry could help, SourceError when not."""
    try:
        with urllib.request.urlopen(url, timeout=network.timeout_seconds) as response:
            return read_body(response, network, label or url, max_bytes)
    except urllib.error.HTTPError as error:
        if error.code in RETRYABLE_HTTP_STATUSES:
            raise TransientError(f"HTTP {error.code} {error.reason}") from None
        raise HttpStatusError(url, error.code, str(error.reason)) from None
    except urllib.error.URLError as error:
        if is_transient(error.reason):
            raise TransientError(describe_os_error(error.reason)) from None
        raise SourceError(url, describe_os_error(error.reason)) from None
    except (http.client.IncompleteRead, http.client.RemoteDisconnected) as error:
        raise TransientError(f"connection dropped mid-file ({error!r})") from None
    except (http.client.HTTPException, OSError) as error:
        if is_transient(error):
            raise TransientError(describe_os_error(error)) from None
        raise SourceError(url, describe_os_error(error)) from None


def read_body(
    response: http.client.HTTPResponse, network: NetworkSettings, label: str,
    max_bytes: int | None = None,
) -> bytes:
    """Read a response in chunks behind a progress bar; TransientError if it falls short,
    SourceError as soon as it announces or sends more than ``max_bytes``."""
    length_header = response.headers.get("Content-Length")
    expected = int(length_header) if length_header and length_header.isdigit() else None
    if max_bytes is not None and expected is not None and expected > max_bytes:
        raise SourceError(response.url, f"announces {expected:,} bytes, more than the "
                                        f"{max_bytes:,} a copy of this file can be")
    chunks, received = [], 0
    with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
              file=sys.stderr, disable=not network.progress, leave=False) as bar:
        while chunk := response.read(CHUNK_BYTES):
            chunks.append(chunk)
            received += len(chunk)
            if max_bytes is not None and received > max_bytes:
                raise SourceError(response.url, f"sends more than the {max_bytes:,} bytes a "
                                                "copy of this file can be")
            bar.update(len(chunk))
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
