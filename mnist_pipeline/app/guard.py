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
import ipaddress
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
    - a ``Host`` that is not this server's (:func:`foreign_host`: DNS rebinding) is refused
      (421), and a POST or any other method that changes state from another origin's page
      (:func:`foreign_origin`: a form or fetch from any site the user visits) is refused
      (403), before any route runs; ``allowed_hosts`` are names that may be used besides
      loopback ones and the address the connection came to (``serve --host NAME``);
    - every answer says ``X-Content-Type-Options: nosniff``, and a redirect's ``Location``
      is a path (``/static/``), never built from the request's ``Host`` header; every HTML
      answer carries ``html_policy`` (:func:`content_security_policy`) and may not be framed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES,
                 max_bodies: int = MAX_BODIES, body_timeout: float = BODY_TIMEOUT_SECONDS,
                 max_requests: int = MAX_REQUESTS, html_policy: str | None = None,
                 allowed_hosts: Iterable[str] = ()):
        if max_bodies < 1 or body_timeout <= 0 or max_requests < 1:
            raise ValueError("max_bodies and max_requests must be >= 1 and body_timeout > 0")
        self.app = app
        self.max_bytes = max_bytes
        self.max_bodies = max_bodies
        self.body_timeout = body_timeout
        self.max_requests = max_requests
        self.html_policy = html_policy or content_security_policy()
        self.allowed_hosts = frozenset(host.lower().strip("[]") for host in allowed_hosts)
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
        for kind, reason in (("unknown_host", foreign_host(scope, self.allowed_hosts)),
                             ("foreign_origin", foreign_origin(scope))):
            if reason:
                client = scope.get("client") or ("?", 0)
                LOG.warning("%s:%s - %s %s: refused, %s", *client, scope["method"],
                            scope["path"], reason)
                await refusal(scope, kind, reason)(scope, receive, guarded_send)
                return
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


# Methods that change nothing: a page of another origin may send them (a link, an image),
# and cannot read the answer (no CORS headers are ever sent).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
_HOST = re.compile(r"(?:(?P<name>[A-Za-z0-9._-]+)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
                   r"(?::(?P<port>[0-9]{1,5}))?")


def split_host(value: str) -> tuple[str, int | None]:
    """A ``Host`` header's (or an origin's) ``name[:port]`` -> the name, lower case, without
    IPv6 brackets, and the port (None when absent); ``("", None)`` for anything else (a
    user, a path, a port that is not a number)."""
    match = _HOST.fullmatch(value.strip())
    if not match:
        return "", None
    name, port = match.group("name") or match.group("ipv6"), match.group("port")
    return name.lower(), int(port) if port else None


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1), as a name."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def foreign_host(scope: Scope, allowed: frozenset[str] = frozenset()) -> str | None:
    """Why the request's ``Host`` is not this server's, or None when it is.

    Accepted: a loopback name or address (``localhost``, ``127.0.0.1``, ``[::1]``), the
    address the connection came to (scope's ``server``: what a client that dialled the
    address names, and the test clients' own name), and ``allowed`` names (``serve --host
    NAME``); no header at all (HTTP/1.0). Anything else is a name that a DNS server pointed
    at this machine (DNS rebinding lets a web page read a local server that way), or a
    client that went to another server: refused. The port is not compared: it is the
    attacker's to choose, and a forwarded port (docker -p 8080:8000) keeps working.
    """
    values = [value for name, value in scope["headers"] if name == b"host"]
    if not values:
        return None
    shown = values[0].decode("latin-1")
    name, _ = split_host(shown)
    own = (scope.get("server") or ("",))[0] or ""
    if len(values) == 1 and name and (is_loopback(name) or name == own.lower().strip("[]")
                                      or name in allowed):
        return None
    return (f"Host {shown[:80]!r} is not this server's: it answers loopback names "
            "(localhost, 127.0.0.1, [::1]) and the address it was reached at; start it with "
            "--host NAME to be reached as NAME")


def foreign_origin(scope: Scope) -> str | None:
    """Why a request that may change state comes from another origin's page, or None.

    Browsers send any page's form or ``fetch`` POST to another origin without asking
    first (a "simple request": CORS does not stop it), but they say where it came from:
    ``Sec-Fetch-Site`` (``cross-site``, ``same-site``: refused) and ``Origin``, which must
    be this server's own (its scheme and the ``Host`` it was reached at; ``null``, from a
    sandboxed frame or a file, is refused). curl and scripts send neither: accepted, as is
    any GET or HEAD (a link or an image, whose answer another page cannot read).
    """
    if scope["method"] in SAFE_METHODS:
        return None
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
    if site in ("cross-site", "same-site"):
        return (f"a {scope['method']} from another site's page (Sec-Fetch-Site: {site}): "
                "only this server's own page may send it")
    if b"origin" not in headers:
        return None
    origin = headers[b"origin"].decode("latin-1").strip()
    scheme = scope.get("scheme", "http")
    default = {"http": 80, "https": 443}.get(scheme)
    theirs_scheme, _, authority = origin.partition("://")
    theirs = split_host(authority)
    host = headers.get(b"host")
    server = scope.get("server") or ("", None)
    ours = split_host(host.decode("latin-1")) if host is not None else \
        (str(server[0]).lower(), server[1])
    if (theirs[0] and theirs_scheme.lower() == scheme and theirs[0] == ours[0]
            and (theirs[1] or default) == (ours[1] or default)):
        return None
    return (f"a {scope['method']} from another origin's page (Origin: {origin[:80]}): only "
            "this server's own page may send it")


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
