"""ASGI middleware of ``serve``: requests bounded in number, bodies in size, time and
number, safe headers on every answer, and the refusals made before or instead of the
application.

The numbers are :mod:`mnist_pipeline.app.limits`'; routes raise :class:`Refused`. Deadlines
on connections, before a request's headers are in, are :mod:`mnist_pipeline.app.server`'s.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import urllib.parse
from collections.abc import Iterable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_pipeline.app.limits import (
    BODY_TIMEOUT_SECONDS,
    MAX_BODIES,
    MAX_REQUEST_BYTES,
    MAX_REQUESTS,
    STATUS_OF,
)

LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: one place, its format


class Refused(HTTPException):
    """A request the server will not answer: ``kind`` is a key of :data:`STATUS_OF`."""

    def __init__(self, kind: str, reason: str):
        super().__init__(STATUS_OF[kind], reason)


class RequestTooLarge(Exception):
    """The request body grew past MAX_REQUEST_BYTES while it was being read."""


class BodyTimeout(Exception):
    """The request body had not all arrived by its deadline."""


class GuardRequests:
    """ASGI middleware: what any client may cost the server, and headers on every answer.

    - at most ``max_requests`` requests are in progress at once; more are answered 503 at
      once (idle connections are not requests: they cost nothing here);
    - a request that declares both ``Transfer-Encoding: chunked`` and ``Content-Length`` is
      refused (400) and its connection closed: a proxy in front may read its body
      otherwise than uvicorn does, and smuggle a second request inside it;
    - a ``Content-Length`` over ``max_bytes`` is answered 413 at once, unread; a body
      without one (chunked) raises :class:`RequestTooLarge` from ``receive`` as soon as it
      passes the limit: the same 413;
    - a request with a body waits for one of ``max_bodies`` turns (503 when none came by its
      deadline), so at most ``max_bodies x max_bytes`` of bodies are held, however many
      clients send at once; while it waits, uvicorn stops reading its connection;
    - its body must have arrived ``body_timeout`` seconds after the request began (turn
      included), else 408: a stalled or slow sender is cut off, its connection closed;
    - a client that goes away mid-body is logged in one line, not a traceback;
    - every answer says ``X-Content-Type-Options: nosniff``, and a redirect's ``Location``
      is a path (``/static/``), never built from the request's ``Host`` header; every HTML
      answer carries ``html_policy`` (:func:`content_security_policy`) and may not be framed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES,
                 max_bodies: int = MAX_BODIES, body_timeout: float = BODY_TIMEOUT_SECONDS,
                 max_requests: int = MAX_REQUESTS, html_policy: str | None = None):
        if max_bodies < 1 or body_timeout <= 0 or max_requests < 1:
            raise ValueError("max_bodies and max_requests must be >= 1 and body_timeout > 0")
        self.app = app
        self.max_bytes = max_bytes
        self.max_bodies = max_bodies
        self.body_timeout = body_timeout
        self.max_requests = max_requests
        self.html_policy = html_policy or content_security_policy()
        self.in_progress = 0
        self._turns: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_requests:
            await refusal(scope, "busy", f"busy: {self.max_requests} requests in progress; "
                          "try again", {"retry-after": "1"})(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.guard(scope, receive, send)
        finally:
            self.in_progress -= 1

    async def guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": safe_headers(message.get("headers", []),
                                                              self.html_policy)}
            await send(message)

        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        encoding = headers.get(b"transfer-encoding")
        chunked = b"chunked" in (encoding or b"").lower()
        if encoding is not None and b"content-length" in headers:
            await refusal(scope, "unreadable", "both Transfer-Encoding and Content-Length: "
                          "the body's length is ambiguous")(scope, receive, guarded_send)
            return
        if declared.isdigit() and int(declared) > self.max_bytes:
            await refusal(scope, "too_large", self.over_the_limit())(scope, receive, guarded_send)
            return
        if not chunked and (not declared.isdigit() or int(declared) == 0):
            await self.app(scope, receive, guarded_send)  # no body: nothing to hold
            return

        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first request, or a test client's new event loop
            self._loop, self._turns = loop, asyncio.Semaphore(self.max_bodies)
        turns = self._turns
        deadline = loop.time() + self.body_timeout
        try:
            await asyncio.wait_for(turns.acquire(), self.body_timeout)
        except TimeoutError:
            await refusal(scope, "busy", f"busy: {self.max_bodies} uploads in progress for "
                          f"{self.body_timeout:g} s; try again", {"retry-after": "5"}
                          )(scope, receive, guarded_send)
            return
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: waiting for a disconnect has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge
                complete = not message.get("more_body", False)
            return message

        try:
            await self.app(scope, limited_receive, guarded_send)
        except (BodyTimeout, RequestTooLarge) as error:
            if started:
                raise
            kind, reason = ("too_large", self.over_the_limit()) \
                if isinstance(error, RequestTooLarge) else \
                ("too_slow", f"the request body did not arrive within {self.body_timeout:g} s")
            await refusal(scope, kind, reason)(scope, receive, guarded_send)
        except ClientDisconnect:
            client = scope.get("client") or ("?", 0)
            LOG.info("%s:%s - %s %s: the client went away after %s of its body", *client,
                     scope["method"], scope["path"], f"{received:,} bytes")
        finally:
            turns.release()

    def over_the_limit(self) -> str:
        return f"request body over the limit of {self.max_bytes:,} bytes"


_SET_HERE = frozenset({b"x-content-type-options", b"content-security-policy",
                       b"x-frame-options"})


def safe_headers(headers: list[tuple[bytes, bytes]], html_policy: str | None = None
                 ) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``X-Content-Type-Options: nosniff``, and a ``Location`` made a path
    (Starlette builds redirects from the request's Host header, which the client chose).

    An HTML answer gets ``html_policy`` (default :func:`content_security_policy`) as its
    ``Content-Security-Policy``, and ``X-Frame-Options: DENY`` for browsers that predate
    ``frame-ancestors``: whatever route or static file it came from, one policy.
    """
    safe = []
    html = False
    for name, value in headers:
        name = name.lower()
        if name == b"location":
            parts = urllib.parse.urlsplit(value.decode("latin-1"))
            value = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")
                                            ).encode("latin-1")
        if name == b"content-type":
            html = value.split(b";")[0].strip().lower() == b"text/html"
        if name not in _SET_HERE:
            safe.append((name, value))
    safe.append((b"x-content-type-options", b"nosniff"))
    if html:
        policy = html_policy or content_security_policy()
        safe += [(b"content-security-policy", policy.encode("latin-1")),
                 (b"x-frame-options", b"DENY")]
    return safe


def content_security_policy(allowed_scripts: Iterable[str] = ()) -> str:
    """The one policy of every HTML answer: everything from this server only (the page
    works offline), nothing may frame it, and of inline scripts only ``allowed_scripts``
    (the API docs' own, by their SHA-256), so that markup injected into a page cannot run.

    Inline styles are allowed: the API docs' scripts set them as they draw.
    """
    digests = (hashlib.sha256(script.encode()).digest() for script in allowed_scripts)
    hashes = "".join(f" 'sha256-{base64.b64encode(digest).decode()}'" for digest in digests)
    return ("default-src 'self'; "
            f"script-src 'self'{hashes}; "
            "style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def scripts_in_page(html: str) -> list[str]:
    """The text of each ``<script>`` of ``html`` without a ``src``."""
    return re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)


def refusal(scope: Scope, kind: str, reason: str,
            headers: dict[str, str] | None = None) -> JSONResponse:
    """A refusal before or instead of the application: ``{"detail": reason}`` (``{"error"}``
    on TF Serving's routes), and the connection closed, since its body is left unread."""
    key = "error" if scope.get("path", "").startswith("/v1/") else "detail"
    return JSONResponse({key: reason}, status_code=STATUS_OF[kind],
                        headers={"connection": "close", **(headers or {})})
